"""Models: the attribute DDPM and SD + LoRA families, schedulers, pipelines, and the one training engine."""

import logging


class _NoTorchvisionFallbackNotice(logging.Filter):
    """Stable Diffusion pipelines import CLIPImageProcessor, which transformers announces it replaces with its
    PIL twin when torchvision is absent (it is not needed here: images are preprocessed by the data layer)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "requires torchvision (not installed)" not in record.getMessage()


logging.getLogger("transformers.utils.import_utils").addFilter(_NoTorchvisionFallbackNotice())
