"""Sampling pipeline of the attribute DDPM with classifier-free guidance: the project's side of it.

The sampling itself (`__call__`, one batched U-Net pass per step for both guidance halves) is
`models.attribute_pipeline.AttributeDiffusionPipeline`, self-contained code; this subclass adds how the
project saves and loads it.

`save_pretrained` writes diffusers' layout for custom code, as pipelines shared on the Hub do: the
weights and configs, plus the code itself -- `pipeline.py` (= models/attribute_pipeline.py) at the
folder's root and `unet/unet_attribute.py` (= models/unet_attribute.py) -- named by `model_index.json`
(`"_class_name": ["pipeline", "AttributeDiffusionPipeline"]`, `"unet": ["unet_attribute", "AttributeUNet"]`).
So a saved folder loads with plain diffusers in a process that has never imported this project:

    DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)

and with `AttributeDiffusionPipeline.from_pretrained(folder)` here, which loads the project's own classes
(never the folder's copies), as it does for folders saved earlier: those name the U-Net
`models.unet_attribute.AttributeUNet`, or `models.ddpm.AttributeUNet` (before the U-Net had its own
module; loaded without importing `models.ddpm`, which imports this module).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from models import attribute_pipeline, unet_attribute
from models.unet_attribute import AttributeUNet

LEGACY_UNET_MODULES = ("models.ddpm",)  # where saved model_index.json files may say AttributeUNet lives
# What a saved folder's model_index.json names, and where the code it names lies in the folder.
PIPELINE_CODE = ("pipeline", "pipeline.py")
UNET_CODE = ("unet_attribute", "unet/unet_attribute.py")


class AttributeDiffusionPipeline(attribute_pipeline.AttributeDiffusionPipeline):
    """Generate faces for attribute levels (B, 5) or condition vectors (B, 30).

    Components: `unet` (models.unet_attribute.AttributeUNet) and `scheduler` (any diffusers scheduler;
    swap with `pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)` or
    `models.schedulers.make_scheduler`, which also sets pixel-space clipping).

    Cost: one U-Net forward pass per step (both classifier-free-guidance halves in one batch of 2B).
    """

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        folder = Path(pretrained_model_name_or_path)
        if (folder / "model_index.json").is_file():
            index = json.loads((folder / "model_index.json").read_text())
            library = index.get("unet", [None])[0]
            saved_code = isinstance(index.get("_class_name"), list) or library == UNET_CODE[0]
            if saved_code or (library in LEGACY_UNET_MODULES and library not in sys.modules):
                return cls._from_folder(folder, index, **kwargs)
        return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)

    @classmethod
    def _from_folder(cls, folder: Path, index: dict, **kwargs) -> AttributeDiffusionPipeline:
        """A local folder loaded with the project's classes: one that carries its own code (diffusers would run
        that copy, and only with trust_remote_code), or whose model_index.json names `models.ddpm` for the U-Net
        (diffusers would refuse it unless that module were imported). Its two components are loaded directly."""
        import diffusers

        unet = kwargs.get("unet") or AttributeUNet.from_pretrained(folder / "unet")
        scheduler = kwargs.get("scheduler") or getattr(diffusers, index["scheduler"][1]).from_pretrained(
            folder / "scheduler")
        dtype = kwargs.get("torch_dtype") or kwargs.get("dtype")
        if dtype is not None:
            unet.to(dtype)
        return cls(unet=unet, scheduler=scheduler)

    def save_pretrained(self, save_directory, *args, **kwargs) -> None:
        """diffusers' save_pretrained, plus the code that plain diffusers needs to load the folder (see above)."""
        super().save_pretrained(save_directory, *args, **kwargs)
        write_pipeline_code(save_directory)


def write_pipeline_code(folder: str | Path) -> Path:
    """Put the self-contained pipeline and U-Net code into a saved pipeline folder and name them in its
    model_index.json (diffusers' custom-code layout); returns the folder."""
    folder = Path(folder)
    shutil.copyfile(attribute_pipeline.__file__, folder / PIPELINE_CODE[1])
    shutil.copyfile(unet_attribute.__file__, folder / UNET_CODE[1])
    path = folder / "model_index.json"
    index = json.loads(path.read_text())
    index["_class_name"] = [PIPELINE_CODE[0], attribute_pipeline.AttributeDiffusionPipeline.__name__]
    index["unet"] = [UNET_CODE[0], AttributeUNet.__name__]
    path.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return folder
