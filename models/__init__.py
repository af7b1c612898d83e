"""Models: the attribute DDPM and SD + LoRA families, schedulers, pipelines, and the one training engine.

Importing it imports `data` first, whose __init__ sets the offline defaults (HF_HUB_OFFLINE, ...).
"""

import logging

import data  # noqa: F401  (sets the offline defaults before any module here imports diffusers or transformers)


class _NoTorchvisionFallbackNotice(logging.Filter):
    """Stable Diffusion pipelines import CLIPImageProcessor, which transformers announces it replaces with its
    PIL twin when torchvision is absent (it is not needed here: images are preprocessed by the data layer)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "requires torchvision (not installed)" not in record.getMessage()


logging.getLogger("transformers.utils.import_utils").addFilter(_NoTorchvisionFallbackNotice())
