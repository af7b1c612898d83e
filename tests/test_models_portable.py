"""A saved DDPM folder carries its own code: plain diffusers loads it where this project was never imported."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from data import schema
from models import attribute_pipeline, unet_attribute
from models.schedulers import training_scheduler
from tests.models_helpers import micro_family

ROOT = Path(__file__).resolve().parent.parent
ALLOWED_IMPORTS = {"__future__", "inspect", "numpy", "torch", "diffusers"}


@pytest.mark.parametrize("module", [attribute_pipeline, unet_attribute])
def test_the_saved_code_imports_only_numpy_torch_and_diffusers(module):
    tree = ast.parse(Path(module.__file__).read_text())
    names = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert names <= ALLOWED_IMPORTS, names - ALLOWED_IMPORTS


def test_the_saved_code_agrees_with_the_data_schema_and_schedulers():
    assert attribute_pipeline.ATTRIBUTES == schema.ATTRIBUTES and attribute_pipeline.NUM_LEVELS == schema.NUM_LEVELS
    assert attribute_pipeline.COND_DIM == unet_attribute.COND_DIM == schema.COND_DIM
    levels = np.random.default_rng(0).integers(0, 6, (7, 5))
    assert torch.equal(attribute_pipeline.as_cond(levels), schema.as_cond(levels))
    cond = schema.levels_to_cond(levels)
    assert torch.equal(attribute_pipeline.as_cond(cond), schema.as_cond(cond))
    for bad in (np.full((1, 5), 6), np.zeros((1, 4)), np.full((1, 5), 0.5)):
        with pytest.raises(ValueError):
            attribute_pipeline.as_cond(bad)
    s = attribute_pipeline.float64_alpha_bar(training_scheduler(10_000))
    assert s.alphas_cumprod.dtype == torch.float64 and float(s.alphas_cumprod[-1]) > 0


@pytest.mark.slow  # a new interpreter
def test_plain_diffusers_loads_a_saved_folder_in_a_process_that_never_saw_the_project(tmp_path):
    family = micro_family(seed=5)
    family.save_pretrained(tmp_path / "ddpm")
    pipe = family.pipeline()
    pipe.set_progress_bar_config(disable=True)
    levels = np.array([[0, 1, 2, 3, 4], [5, 5, 0, 0, 2]])
    expected = pipe(levels, guidance_scale=3.0, num_inference_steps=3, output_type="np",
                    generator=torch.Generator().manual_seed(1)).images
    np.save(tmp_path / "expected.npy", expected)
    code = (
        "import sys, importlib.util\n"
        "sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in repr(f)]  # the venv's editable install\n"
        "assert importlib.util.find_spec('models') is None and importlib.util.find_spec('orchestration') is None\n"
        "import numpy as np, torch\n"
        "torch.set_num_threads(1)\n"
        "from diffusers import DiffusionPipeline\n"
        "p = DiffusionPipeline.from_pretrained(sys.argv[1], trust_remote_code=True)\n"
        "p.set_progress_bar_config(disable=True)\n"
        "img = p(np.array([[0, 1, 2, 3, 4], [5, 5, 0, 0, 2]]), guidance_scale=3.0, num_inference_steps=3,\n"
        "        output_type='np', generator=torch.Generator().manual_seed(1)).images\n"
        "print(type(p).__name__, type(p.unet).__name__, type(p.unet).__module__)\n"
        "print(float(np.abs(img - np.load(sys.argv[2])).max()))\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'data', 'models', 'orchestration', 'evaluation'}))\n"
        "print(any(p_ and __import__('os').path.samefile(p_, sys.argv[3]) for p_ in sys.path\n"
        "          if __import__('os').path.exists(p_ or '.')))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["HF_MODULES_CACHE"] = str(tmp_path / "hf-modules")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "ddpm"), str(tmp_path / "expected.npy"), str(ROOT)],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    kind, diff, project, on_path = out.stdout.strip().splitlines()[-4:]
    assert kind == "AttributeDiffusionPipeline AttributeUNet diffusers_modules.local.unet_attribute"
    assert float(diff) < 1e-5  # the same images as the project's pipeline
    assert project == "[]" and on_path == "False"  # nothing of this project was imported, nor importable
