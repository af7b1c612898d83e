"""Data layer: attribute schema, CelebA/CelebA-Dialog readers, the image cache, synthetic faces, loaders.

Importing the package sets the process's offline defaults, once for every layer (each layer imports `data` first,
directly or through `models`): Hugging Face libraries read HF_HUB_OFFLINE when they are imported, so it must be set
before anything imports diffusers or transformers. A value the user set wins (setdefault).
"""

import os

OFFLINE_DEFAULTS = {
    "HF_HUB_OFFLINE": "1",  # weights come from local folders and caches; a missing one fails fast, not after retries
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "NO_ALBUMENTATIONS_UPDATE": "1",  # albumentations would check PyPI for a newer version on import
}
for _name, _value in OFFLINE_DEFAULTS.items():
    os.environ.setdefault(_name, _value)
