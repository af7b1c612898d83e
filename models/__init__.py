"""Models: the attribute DDPM and SD + LoRA families, schedulers, pipelines, and the one training engine.

Importing the package sets the process's offline defaults, once for every layer above it (evaluation imports this
package first): Hugging Face libraries read HF_HUB_OFFLINE when they are imported, so it must be set before any
module here imports diffusers or transformers. A value the user set wins (setdefault).
"""

import logging
import os

OFFLINE_DEFAULTS = {
    "HF_HUB_OFFLINE": "1",  # weights come from local folders and caches; a missing one fails fast, not after retries
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "NO_ALBUMENTATIONS_UPDATE": "1",  # albumentations would check PyPI for a newer version on import
}
for _name, _value in OFFLINE_DEFAULTS.items():
    os.environ.setdefault(_name, _value)


class _NoTorchvisionFallbackNotice(logging.Filter):
    """Stable Diffusion pipelines import CLIPImageProcessor, which transformers announces it replaces with its
    PIL twin when torchvision is absent (it is not needed here: images are preprocessed by the data layer)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "requires torchvision (not installed)" not in record.getMessage()


logging.getLogger("transformers.utils.import_utils").addFilter(_NoTorchvisionFallbackNotice())
