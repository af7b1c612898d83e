"""The sweep for real: a local Ray runtime, a real MLflow SQLite store, the real engine and evaluation actors.

Everything is tiny (16 px synthetic faces, 2-level U-Nets, one short epoch) so the file runs in a few
minutes on 2 cores; the record is checked through MlflowClient the way a user would see it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.tools import JOINT_FAMILIES

pytestmark = pytest.mark.slow  # sweeps

ROOT = Path(__file__).resolve().parent.parent


def smoke(tmp: Path, data: str, **changes):
    from orchestration.config import resolve

    return resolve("smoke", data=data, tracking_uri=f"sqlite:///{tmp / 'mlruns.db'}",
                   storage_path=str(tmp / "results"), **changes)


def client_for(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def children(client, parent_id: str):
    exp = client.get_run(parent_id).info.experiment_id
    return client.search_runs([exp], filter_string=f"tags.`mlflow.parentRunId` = '{parent_id}'")


def artifact_paths(client, run_id: str, path: str | None = None) -> set[str]:
    out = set()
    for f in client.list_artifacts(run_id, path):
        out |= artifact_paths(client, run_id, f.path) if f.is_dir else {f.path}
    return out


def test_mini_sweep_lands_in_mlflow(joint_sweep, tmp_path):
    cfg, out, client = joint_sweep["cfg"], joint_sweep["out"], joint_sweep["client"]
    parent = client.get_run(out["parent_run_id"])
    assert parent.info.status == "FINISHED"
    # every field of the resolved config is a param of the parent run: no hidden defaults; and the estimator that
    # judged the sweep, with the speed options its training resolved to, its accuracy and its files
    params = dict(parent.data.params)
    estimator = {k: params.pop(k) for k in list(params) if k.startswith("estimator.")}
    assert params == cfg.params()
    assert estimator["estimator.preset"] == cfg.estimator_preset and estimator["estimator.mixed_precision"] == "auto"
    assert estimator["estimator.trained_precision"] in ("fp32", "bf16")
    assert 0 < parent.data.metrics["estimator_val_acc"] <= 1
    logged = {f.path for f in client.list_artifacts(parent.info.run_id, "estimator")}
    assert {"estimator/estimator.safetensors", "estimator/config.json", "estimator/report.json",
            "estimator/confusion_smiling.png"} <= logged
    assert parent.data.tags["condface.family"] == cfg.model == JOINT_FAMILIES and parent.data.tags["condface.preset"] == "smoke"

    runs = children(client, parent.info.run_id)
    by_phase: dict[str, list] = {}
    for r in runs:
        assert r.info.status == "FINISHED", (r.info.run_name, r.info.status)
        if r.data.tags["condface.family"] in ("ddpm", "real"):  # the DDPM's runs and the real-image references
            by_phase.setdefault(r.data.tags["condface.phase"], []).append(r)
    assert sorted(by_phase) == ["cfg", "final", "grid", "reference", "samplers"]
    assert len(by_phase["grid"]) == 2 and len(by_phase["final"]) == 1
    assert len(by_phase["reference"]) == 2  # real images (shared by families) + the untrained DDPM

    for run in by_phase["grid"] + by_phase["final"]:
        params = run.data.params
        for key in ("trial.grad_accum", "trial.timesteps", "trial.min_snr_gamma", "train.lr", "train.batch_size",
                    "train.p_uncond", "model.block_out_channels", "built.params_total", "sampler"):
            assert key in params, key
        assert run.data.tags["condface.loader_workers"] == "0"  # a CPU trial loads in its own process
        for key in ("train_loss", "val_loss", "fd_estimator", "est_acc", "est_acc_balanced", "epoch_seconds",
                    "images_per_second", "fd_estimator_n"):
            history = client.get_metric_history(run.info.run_id, key)
            assert [m.step for m in history] == [1], (key, history)
        assert "fid" not in run.data.metrics  # no Inception here: unavailable with a reason, never a number
        assert "torch-fidelity" in run.data.tags["condface.unavailable.fid"]
        files = artifact_paths(client, run.info.run_id)
        assert {"samples/epoch_001/samples.png", "samples/epoch_001/attributes.png"} <= files
        # MLflow keeps what sampling uses (EMA weights + the small state), not the optimizer: that stays in Ray storage
        ckpt = {f.rsplit("/", 1)[1] for f in files if f.startswith("checkpoints/best_epoch_001/")}
        assert ckpt == {"ema.safetensors", "state.pt"}, ckpt
        assert run.data.tags["condface.node_ip"]  # which Ray node ran it
    channels = {r.data.params["trial.channels"] for r in by_phase["grid"]}
    assert channels == {"small", "large"}

    # final run: evaluated on the final sample set and registered as a loadable diffusers pipeline
    final = by_phase["final"][0]
    assert final.data.metrics["final_est_acc_n"] == cfg.final_samples
    fin = out["families"]["ddpm"]["final"]
    model_uri = final.data.tags["condface.registered_model"]
    assert model_uri == fin["model_uri"]
    import mlflow

    mlflow.set_registry_uri(cfg.tracking_uri)
    local = mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=str(tmp_path / "dl"),
                                                tracking_uri=cfg.tracking_uri)
    from models.families import load_pipeline
    from models.sampling import generate

    loaded, saved = load_pipeline("ddpm", local), load_pipeline("ddpm", fin["pipeline_dir"])
    levels = np.array([[0, 1, 2, 3, 4], [5, 4, 3, 2, 1]])
    a = generate(loaded, levels, None, 3.0, 3, seed=0, scheduler="ddim")
    b = generate(saved, levels, None, 3.0, 3, seed=0, scheduler="ddim")
    assert a.shape == (2, 16, 16, 3) and np.array_equal(a, b)

    # CFG sweep: one step per scale, the Pareto plot, the table
    cfg_run = by_phase["cfg"][0]
    scales = client.get_metric_history(cfg_run.info.run_id, "guidance_scale")
    assert sorted(m.value for m in scales) == list(cfg.cfg_scales)
    assert {"cfg/cfg_pareto.png", "cfg/cfg_sweep.json"} <= artifact_paths(client, cfg_run.info.run_id)
    # reference rows, once per experiment
    metrics = set().union(*(set(r.data.metrics) for r in by_phase["reference"]))
    assert {"untrained.est_acc_balanced", "ground_truth.est_acc_balanced", "real_held_out.est_acc"} <= metrics


def test_mini_lora_sweep_lands_in_mlflow(joint_sweep):
    client = joint_sweep["client"]
    parent = client.get_run(joint_sweep["parent"])
    assert parent.info.status == "FINISHED"
    runs = children(client, joint_sweep["parent"])
    grid = [r for r in runs if r.data.tags["condface.phase"] == "grid" and r.data.tags["condface.family"] == "sd-lora"]
    assert all(r.data.tags["condface.base"].startswith("tiny offline SD base 'test'") for r in grid)  # no --pretrained
    assert sorted(r.data.params["trial.lora_rank"] for r in grid) == ["2", "4"]
    for run in grid:
        assert run.info.status == "FINISHED"
        assert run.data.tags["condface.family"] == "sd-lora"
        assert run.data.tags["condface.base"]  # which base the adapters adapted, in words
        assert int(run.data.params["built.params_trainable"]) < int(run.data.params["built.params_total"])
        for key in ("train_loss", "val_loss", "est_acc_balanced", "fd_estimator"):
            assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == [1], key
        assert "samples/epoch_001/attributes.png" in artifact_paths(client, run.info.run_id)
    # the LoRA rank really differs between the trials
    ranks = {r.data.params["trial.lora_rank"]: int(r.data.params["built.params_trainable"]) for r in grid}
    assert ranks["4"] == 2 * ranks["2"]
