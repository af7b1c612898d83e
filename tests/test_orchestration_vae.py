"""The vae phase in a smoke sweep of sd-lora (--tune-vae, 16 px, the `test` tiny base): the driver dies right after
it, and --resume skips it and trains the grid on the VAE it recorded. Real Ray, real MLflow store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.test_orchestration_sweep import _kill_tree, artifact_paths, children, client_for

pytestmark = pytest.mark.slow  # a sweep

ROOT = Path(__file__).resolve().parent.parent


def _run_until(args: list[str], env: dict, log: Path, pause_at: str | None, timeout: float = 900) -> str:
    """Run the sweep; with `pause_at`, kill it (driver + Ray, as a dying machine) once it pauses there."""
    env = {**env, "CONDFACE_PAUSE_AT": pause_at or ""}
    with open(log, "w") as out:
        proc = subprocess.Popen(args, cwd=log.parent, env=env, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.time() + timeout
        while time.time() < deadline and proc.poll() is None:
            time.sleep(0.3)
            if pause_at and f"[reached] {pause_at}: paused" in log.read_text():
                _kill_tree(proc)
                return log.read_text()
        if proc.poll() is None:
            _kill_tree(proc)
            raise AssertionError(f"timed out:\n{log.read_text()[-3000:]}")
    text = log.read_text()
    assert proc.returncode == 0 and not pause_at, f"rc {proc.returncode}, expected a pause at {pause_at}:\n{text[-4000:]}"
    return text


def test_the_vae_phase_runs_once_is_logged_and_the_grid_trains_on_the_tuned_vae(tmp_path, data, home, tiny_bases):
    from orchestration.report.protocol import CHOICE, protocol_rows
    from orchestration.report.record import Record
    from orchestration.report.vae_figure import vae_figure

    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    args = [sys.executable, "-m", "orchestration.sweep", "--preset", "smoke", "--model", "sd-lora", "--data", data,
            "--tune-vae", "--final-epochs", "0", "--no-dashboard", "--tracking-uri", uri,
            "--storage-path", str(tmp_path / "results")]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CONDFACE_HOME": str(home)}
    first = _run_until(args, env, tmp_path / "1.log", "sd-lora/reference")  # killed right after the vae phase
    assert "== sd-lora: VAE tuned at 16px: 6 steps" in first and "sd-lora VAE, base -> tuned, on 8 validation images: psnr" in first
    second = _run_until([*args, "--resume"], env, tmp_path / "2.log", None)
    assert "[sd-lora/vae] done in an earlier run of this sweep: skipped" in second
    assert "VAE tuned at 16px: 6 steps" not in second
    assert "sd-lora VAE, base -> tuned, on 8 validation images: psnr" in second  # the summary, from the record

    state = json.loads(next((tmp_path / "results").glob("*/sweep.json")).read_text())
    vae_dir = state["phases"]["sd-lora/vae"]["result"]["vae_dir"]
    assert (Path(vae_dir) / "diffusion_pytorch_model.safetensors").is_file()
    client = client_for(uri)
    runs = children(client, state["parent_run_id"])
    vae_runs = [r for r in runs if r.data.tags["condface.phase"] == "vae"]
    assert len(vae_runs) == 1 and vae_runs[0].info.status == "FINISHED"
    run = vae_runs[0]
    for which in ("base_vae", "tuned_vae"):
        assert {f"{which}.{k}" for k in ("psnr", "latent_std", "fd_estimator", "est_acc")} <= set(run.data.metrics)
    assert [m.step for m in client.get_metric_history(run.info.run_id, "vae_loss")] == list(range(1, 7))
    assert "condface.unavailable.lpips_term" in run.data.tags  # no LPIPS weights offline: said so, not faked
    assert {"vae/fig3.1_vae.png", "vae/tuned/diffusion_pytorch_model.safetensors"} <= artifact_paths(
        client, run.info.run_id)
    grid = [r for r in runs if r.data.tags["condface.phase"] == "grid"]
    assert grid and all(r.data.params["model.vae"] == vae_dir for r in grid)
    reference = [r for r in runs if r.data.tags["condface.phase"] == "reference"
                 and r.data.tags["condface.family"] == "sd-lora"]
    assert reference and "tuned" in reference[0].data.params["ref.model_config"]

    record = Record.load(uri, "condface-sd-lora-smoke", state["parent_run_id"])
    figure = vae_figure(record)
    assert figure is not None and figure.key == "3.1" and figure.panels[0].png.startswith(b"\x89PNG")
    # the protocol table names the tuning this sweep ran, as this project's choice beside the study's proposal
    rows = {name: (ours, theirs) for name, ours, theirs in protocol_rows(record)}
    ours, theirs = rows["VAE tuned at the data's resolution (sd-lora)"]
    assert ours.startswith("preset test: 6 steps x batch 8, lr 0.001") and CHOICE in theirs and "§5" in theirs
