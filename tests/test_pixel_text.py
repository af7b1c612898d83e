"""The pixel text DDPM (`--model pixel-text`): a text-conditioned U-Net trained from scratch on pixels, conditioned
by a frozen CLIP text encoder, trained by the one engine, saved and loaded as a whole pipeline, drawn from by
`python -m models.generate`; and one smoke sweep of it (slow) from the grid to the report.

The models-level tests load the text encoder the way a real Stable Diffusion base is loaded (`--pretrained FOLDER`:
its `tokenizer/` and `text_encoder/` subfolders), from the `test` tiny base built in a temporary folder.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from data.dataset import to_model_range
from data.schema import levels_to_cond
from data.synthetic import draw_faces, sample_levels
from models.engine import TrainConfig, fit
from models.errors import ConfigError
from models.families import build_family, family_config, family_of, load_pipeline
from models.sampling import generate
from models.text_condition import caption_embeddings
from models.tiny_base import PRESETS as TINY
from models.tiny_base import ensure_tiny_base

SIZE = 16
CAPTIONS = ["A smiling man with a full beard.", "An old woman wearing thick glasses."]


def faces(n: int, seed: int = 0) -> list[dict]:
    levels = sample_levels(n, np.random.default_rng(seed), "uniform")
    images, captions = draw_faces(levels, SIZE, seed)
    return [{"image": to_model_range(images[i]), "levels": torch.from_numpy(levels[i]),
             "cond": torch.from_numpy(levels_to_cond(levels[i])), "caption": captions[i]} for i in range(n)]


@pytest.fixture(scope="module")
def items() -> list[dict]:
    return faces(32)


@pytest.fixture(scope="module")
def base(tmp_path_factory, items) -> str:
    """A Stable Diffusion pipeline folder (the tiny `test` base): what --pretrained FOLDER points at."""
    return str(ensure_tiny_base(TINY["test"], root=tmp_path_factory.mktemp("sd") / "base", dataset=items)[0])


def family(base: str, **overrides):
    return build_family("pixel-text", family_config("pixel-text", "test", pretrained=base, **overrides), seed=0,
                        verbose=False)


def test_trains_one_step_with_the_text_encoder_frozen(base, items):
    fam = family(base)
    assert fam.describe()["base"].startswith("the CLIP text encoder of the tiny offline SD base at")
    encoder = {k: v.clone() for k, v in fam.text_encoder.state_dict().items()}
    unet = {k: v.clone() for k, v in fam.module.state_dict().items()}
    counts = fam.parameter_counts()
    assert counts["trainable"] == counts["unet"] < counts["total"]  # the whole U-Net trains, nothing else
    assert not any(p.requires_grad for p in fam.text_encoder.parameters())
    result = fit(fam, TrainConfig(epochs=1, batch_size=8, max_steps_per_epoch=1, val_samples=0, ema=False,
                                  progress=False, verbose=False), items)
    assert result.step == 1 and np.isfinite(result.history[0]["train_loss"])
    assert all(torch.equal(v, fam.text_encoder.state_dict()[k]) for k, v in encoder.items())
    assert any(not torch.equal(v, fam.module.state_dict()[k]) for k, v in unet.items())


def test_cfg_drop_gives_the_empty_caption_embedding(base, items):
    fam = family(base)
    batch = {"image": torch.stack([it["image"] for it in items[:2]]), "caption": CAPTIONS}
    x0, cond = fam.training_inputs(batch, torch.tensor([True, False]), torch.Generator())
    emb = cond["encoder_hidden_states"]
    empty = caption_embeddings(fam.tokenizer, fam.text_encoder, [""])[0]
    assert torch.equal(emb[0], empty) and not torch.equal(emb[1], empty)
    assert torch.equal(emb[1], caption_embeddings(fam.tokenizer, fam.text_encoder, CAPTIONS[1:])[0])
    pipe = fam.pipeline()  # the sampler's unconditional half is the same empty caption
    assert torch.equal(pipe.unconditional(emb)[1], empty)
    assert torch.equal(x0, batch["image"])  # pixels, not latents


def test_pipeline_save_load_round_trip_and_generate(base, tmp_path):
    fam = family(base, num_train_timesteps=50)
    expected = generate(fam, None, CAPTIONS, 3.0, 4, 0, "dpm++")
    assert expected.shape == (2, SIZE, SIZE, 3)
    fam.save_pretrained(tmp_path / "pipe")
    assert family_of(tmp_path / "pipe") == "pixel-text"
    pipe = load_pipeline("pixel-text", tmp_path / "pipe")  # no base needed: the text encoder is in the folder
    assert pipe.scheduler.config.num_train_timesteps == 50  # the training schedule came with it
    assert np.array_equal(generate(pipe, None, CAPTIONS, 3.0, 4, 0, "dpm++"), expected)
    with pytest.raises(ConfigError, match="conditioned on text"):
        generate(pipe, np.zeros((1, 5), dtype=np.int64), None, 3.0, 4, 0)

    from models.generate import main

    main(["--model", str(tmp_path / "pipe"), "--caption", CAPTIONS[0], "-n", "2", "--steps", "3",
          "--out", str(tmp_path / "caption.png")])
    main(["--model", str(tmp_path / "pipe"), "--smiling", "5", "-n", "2", "--steps", "3",
          "--out", str(tmp_path / "levels.png")])  # levels become captions in the training captions' style
    assert (tmp_path / "caption.png").stat().st_size > 0 and (tmp_path / "levels.png").stat().st_size > 0


def test_a_missing_text_encoder_is_one_clear_line(tmp_path):
    with pytest.raises(ConfigError, match="cannot load the text encoder") as err:
        build_family("pixel-text", family_config("pixel-text", "test", pretrained=str(tmp_path)), verbose=False)
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="unknown pixel-text preset"):
        family_config("pixel-text", "huge")


@pytest.mark.slow
def test_smoke_sweep_trains_selects_retrains_sweeps_guidance_registers_and_reports(data, home, tmp_path):
    """`--model pixel-text` end to end on the smoke preset (2 trials x 1 epoch at 16 px, no --pretrained: the tiny
    base's text encoder, which the tags say)."""
    import mlflow
    import pandas as pd
    import ray
    from mlflow.tracking import MlflowClient

    from orchestration.config import resolve
    from orchestration.driver import run_sweep

    started = time.perf_counter()
    cfg = resolve("smoke", model="pixel-text", data=data, tracking_uri=f"sqlite:///{tmp_path / 'mlruns.db'}",
                  storage_path=str(tmp_path / "results"))
    own_ray = not ray.is_initialized()
    if own_ray:
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        out = run_sweep(cfg, dashboard=False)
    finally:
        if own_ray:
            ray.shutdown()
    client = MlflowClient(tracking_uri=cfg.tracking_uri, registry_uri=cfg.tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name(cfg.experiment_name).experiment_id])
    by_phase: dict[str, list] = {}
    for run in runs:
        if run.data.tags.get("condface.family") == "pixel-text":
            by_phase.setdefault(run.data.tags["condface.phase"], []).append(run)
            assert run.info.status == "FINISHED", run.info.run_name
    # trained: both channel sets, the whole U-Net trains, the tiny stand-in named in the tags
    assert sorted(r.data.params["trial.channels"] for r in by_phase["grid"]) == ["large", "small"]
    for run in by_phase["grid"]:
        assert run.data.tags["condface.base"].startswith("the CLIP text encoder of the tiny offline SD base 'test'")
        assert run.data.params["built.params_trainable"] == run.data.params["built.params_unet"]
    # selected, retrained, swept over guidance
    fam = out["families"]["pixel-text"]
    parent = client.get_run(out["parent_run_id"])
    assert parent.data.tags["condface.best_config.pixel-text"] == fam["grid"]["best_label"]
    (final,) = by_phase["final"]
    assert final.info.run_id == fam["final"]["run_id"] and "final_est_acc" in final.data.metrics
    assert [r["guidance_scale"] for r in fam["cfg"]["rows"]] == list(cfg.cfg_scales)
    # registered: the champion is an MLflow model that draws a face for a prompt
    version = client.get_model_version_by_alias("condface-pixel-text", "champion")
    assert f"models:/condface-pixel-text/{version.version}" == fam["final"]["model_uri"]
    mlflow.set_registry_uri(cfg.tracking_uri)
    mlflow.set_tracking_uri(cfg.tracking_uri)
    model = mlflow.pyfunc.load_model("models:/condface-pixel-text@champion")
    drawn = model.predict(pd.DataFrame({"prompt": [CAPTIONS[0]]}), params={"num_inference_steps": 2})
    assert list(drawn["prompt"]) == [CAPTIONS[0]] and len(drawn["image"][0]) > 100
    # reported: a Table 4.4 column, a Figure 4.8 curve and a Figure 4.9 row of its own
    report = (out["state"].root / "report" / "report.md").read_text()
    assert "pixel-text final" in report and "untrained text DDPM" in report
    assert "fig4.8_cfg_pareto.png" in report and "| pixel-text (" in report  # Figure 4.9's table row
    print(f"pixel-text smoke sweep: {time.perf_counter() - started:.0f} s")
