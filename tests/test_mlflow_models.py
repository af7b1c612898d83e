"""Trained models as people use them, on the finished joint smoke sweep (one in-process sweep of several families, shared):

- the registered models are MLflow models with the alias `champion`: `mlflow.pyfunc.load_model(...).predict`
  gives base64 PNGs in a fresh process that never imports the sweep (nor, with the editable install switched
  off, this checkout: the model's own code_paths serve it), `mlflow models serve` answers /invocations;
- registration is idempotent (one logged model and one version per run);
- `python -m models.generate` draws labelled grids from models:/, runs:/ and local folders, and bad input is
  a one-line error;
- the MLflow record a person sees: the model-training experiment kind, the training data as every run's
  dataset input, run descriptions, per-epoch image series; and in a real browser (headless Chromium driven
  by Playwright) the trials with their metrics, a run's metric chart and sample image, the registered model
  with its alias. Screenshots are left in tests/artifacts/mlflow-ui/.
"""

from __future__ import annotations

import base64
import contextlib
import importlib.util
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from tests.tools import require, run_module

ROOT = Path(__file__).resolve().parent.parent
SCREENSHOTS = ROOT / "tests" / "artifacts" / "mlflow-ui"
CHROMIUM = "/usr/bin/chromium"
# A fresh interpreter without this checkout: no PYTHONPATH, cwd elsewhere, and the venv's editable-install
# finder removed, so `models`/`data` can only come from what the MLflow model ships (code_paths).
NO_CHECKOUT = ("import sys, importlib.util\n"
               "sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in repr(f)]\n"
               "assert importlib.util.find_spec('orchestration') is None\n")


@pytest.fixture(scope="module")
def store(joint_sweep):
    """The session's finished joint smoke sweep (tests/conftest.py JOINT_FAMILIES): the MLflow store and what the sweep
    returned."""
    return joint_sweep


def client_for(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def fresh_env(store, **extra) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MLFLOW_TRACKING_URI")}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])  # the venv's scripts
    env.update({"MLFLOW_TRACKING_URI": store["uri"], "CONDFACE_HOME": str(store["home"]),
                "MLFLOW_ENABLE_TELEMETRY": "false", "HF_HUB_OFFLINE": "1", **extra})
    return env


def decode(b64: str) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def server(args: list[str], port: int, env: dict[str, str], log: Path, ready_path: str, timeout_s: float = 180):
    """Start a server (its own process group), wait until GET ready_path answers, and on exit stop exactly that
    process group (the server and the workers it started)."""
    with open(log, "w") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=log.parent,
                                start_new_session=True)
    try:
        deadline = time.time() + timeout_s
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"the server exited ({proc.returncode}):\n" + log.read_text()[-3000:])
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}{ready_path}", timeout=2):
                    break
            except OSError:
                if time.time() > deadline:
                    raise AssertionError("the server did not answer in time:\n" + log.read_text()[-3000:]) from None
                time.sleep(0.5)
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


# --------------------------------------------------------------------------------------------------
# The registry and the record
# --------------------------------------------------------------------------------------------------
def test_each_family_is_a_registered_mlflow_model_with_the_champion_alias(store):
    from mlflow.models import Model

    client = client_for(store["uri"])
    for family, flavor_why in (("ddpm", "pyfunc: the attribute DDPM"), ("sd-lora", "pyfunc: the base is the tiny")):
        name = f"condface-{family}"
        version = client.get_model_version_by_alias(name, "champion")
        fin = store["out"]["families"][family]["final"]
        assert fin["model_uri"] == f"models:/{name}/{version.version}"
        assert version.run_id == fin["run_id"]
        run = client.get_run(fin["run_id"])
        assert run.data.tags["condface.mlflow_flavor"].startswith(flavor_why)
        (logged,) = [client.get_logged_model(o.model_id) for o in run.outputs.model_outputs]  # the run's one model
        assert version.source == logged.artifact_location and str(logged.status).endswith("READY")
        import mlflow

        mlflow.set_registry_uri(store["uri"])  # download_artifacts resolves models:/ in the registry
        local = mlflow.artifacts.download_artifacts(f"models:/{name}@champion", dst_path=str(store["tmp"] / family),
                                                    tracking_uri=store["uri"])
        model = Model.load(local)
        assert "python_function" in model.flavors
        sig = model.signature
        assert [c.name for c in sig.inputs.inputs][:5] == ["bangs", "eyeglasses", "beard", "smiling", "age"]
        assert {p.name for p in sig.params.params} == {"guidance_scale", "num_inference_steps", "sampler", "seed",
                                                      "precision"}
        assert "image" in sig.outputs.input_names()
        assert (Path(local) / "code" / "models" / "mlflow_model.py").is_file()
        artifacts = set(model.flavors["python_function"]["artifacts"])  # sd-lora on the tiny base ships the base
        assert artifacts == ({"pipeline", "condface"} if family == "ddpm" else {"pipeline", "condface", "base"})
        # the project's loader takes the downloaded MLflow model folder too
        from models.families import load_pipeline

        assert load_pipeline(family, local) is not None


def test_registration_is_idempotent(store):
    from orchestration.phases.final import register
    from orchestration.tracking.client import Tracker

    cfg, fin = store["cfg"], store["out"]["families"]["ddpm"]["final"]
    tracker = Tracker(store["uri"], cfg.experiment_name)
    before = tracker.client.search_logged_models([tracker.experiment_id]).to_list()
    again = register(tracker, fin["run_id"], Path(fin["pipeline_dir"]), "condface-ddpm", {"family": "ddpm"},
                     sampling={"guidance_scale": 3.0}, data_root=store["data"])
    assert again == fin["model_uri"]
    assert len(tracker.client.search_model_versions("name = 'condface-ddpm'")) == 1
    assert len(tracker.client.search_logged_models([tracker.experiment_id]).to_list()) == len(before)
    assert str(tracker.client.get_model_version_by_alias("condface-ddpm", "champion").version) == "1"


def test_the_record_a_person_sees(store):
    client = client_for(store["uri"])
    exp = client.get_experiment_by_name(store["cfg"].experiment_name)
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    parent = client.get_run(store["out"]["parent_run_id"])
    runs = [parent, *client.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")]
    names = {Path(store["data"]).name}
    for run in runs:  # the training data is a dataset input of every run (the UI's Dataset column)
        inputs = run.inputs.dataset_inputs
        assert {d.dataset.name for d in inputs} == names, run.info.run_name
        assert {t.value for d in inputs for t in d.tags if t.key == "mlflow.data.context"} == {"training"}
        assert run.data.tags.get("mlflow.note.content"), run.info.run_name
    notes = {r.data.tags["condface.phase"]: r.data.tags["mlflow.note.content"] for r in runs}
    assert notes["grid"].startswith("Grid trial of the") and "T = 1000" in notes["grid"]
    assert notes["final"].startswith("Final run of") and "champion" in notes["final"]
    assert notes["cfg"].startswith("CFG sweep") and notes["reference"].startswith("Reference rows")
    for run in runs:  # per-epoch sample grids as MLflow image series (key, step = epoch)
        if run.data.tags["condface.phase"] in ("grid", "final"):
            images = [f.path for f in client.list_artifacts(run.info.run_id, "images")]
            for key in ("samples", "attributes"):
                assert any(p.startswith(f"images/{key}+step+1+") and p.endswith(".png") for p in images), images


# --------------------------------------------------------------------------------------------------
# Using the models: pyfunc in a fresh process, the REST server, the command line
# --------------------------------------------------------------------------------------------------
def test_pyfunc_predicts_images_in_a_fresh_process(store, tmp_path):
    code = NO_CHECKOUT + (
        "import json, mlflow, pandas as pd\n"
        "out = {}\n"
        "ddpm = mlflow.pyfunc.load_model('models:/condface-ddpm@champion')\n"
        "p = ddpm.predict(pd.DataFrame({'bangs': [5, 0, 3], 'smiling': [0, 5, 2]}),\n"
        "                 params={'num_inference_steps': 2, 'seed': 1, 'sampler': 'ddim'})\n"
        "out['ddpm'] = p.to_dict('list')\n"
        "try:\n"
        "    ddpm.predict(pd.DataFrame({'bangs': [6]}))\n"
        "except Exception as err:\n"
        "    out['bad'] = str(err)\n"
        "out['precision_default'] = {p.name: p.default for p in ddpm.metadata.get_params_schema().params}['precision']\n"
        "for prec in ('no', 'bf16'):\n"
        "    out[prec] = ddpm.predict(pd.DataFrame({'bangs': [5, 0, 3]}), params={'num_inference_steps': 4, 'seed': 2,\n"
        "                             'sampler': 'dpm++', 'precision': prec})['image'].tolist()\n"
        "try:\n"
        "    ddpm.predict(pd.DataFrame({'bangs': [1]}), params={'precision': 'fp8'})\n"
        "except Exception as err:\n"
        "    out['bad_precision'] = str(err)\n"
        "lora = mlflow.pyfunc.load_model('models:/condface-sd-lora@champion')\n"
        "out['lora'] = lora.predict(pd.DataFrame({'prompt': ['A person with big bangs.']}),\n"
        "                           params={'num_inference_steps': 2}).to_dict('list')\n"
        "out['lora_levels'] = lora.predict(pd.DataFrame({'age': [5]}), params={'num_inference_steps': 2}).to_dict('list')\n"
        "import models\n"
        "out['models_from'] = models.__file__\n"
        "out['imported'] = sorted({m.split('.')[0] for m in sys.modules} & {'orchestration', 'evaluation'})\n"
        "print('RESULT' + json.dumps(out))\n"
    )
    res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=fresh_env(store), capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-4000:]
    out = json.loads(res.stdout.split("RESULT", 1)[1])
    assert out["imported"] == [] and not out["models_from"].startswith(str(ROOT / "models"))
    ddpm = out["ddpm"]
    assert len(ddpm["image"]) == 3 and all(decode(b).shape == (16, 16, 3) for b in ddpm["image"])
    assert ddpm["bangs"] == [5, 0, 3] and ddpm["smiling"] == [0, 5, 2]
    assert all(0 <= v <= 5 for v in ddpm["age"])  # left out: drawn from the data's level frequencies
    assert "bangs must be an integer level 0..5" in out["bad"]
    # the sampling precision the sweep evaluated with is the served model's default; the param reaches the sampler
    assert out["precision_default"] == store["cfg"].sampling_precision == "auto"
    fp32, bf16 = (np.stack([decode(b).astype(int) for b in out[p]]) for p in ("no", "bf16"))
    assert 0 < np.abs(fp32 - bf16).mean() < 16
    assert "unknown precision 'fp8'" in out["bad_precision"]
    assert decode(out["lora"]["image"][0]).shape == (16, 16, 3) and out["lora"]["prompt"] == ["A person with big bangs."]
    assert "elderly" in out["lora_levels"]["prompt"][0] or "old" in out["lora_levels"]["prompt"][0]


def test_mlflow_models_serve_answers_invocations(store, tmp_path):
    port = free_port()
    args = [sys.executable, "-m", "mlflow", "models", "serve", "-m", "models:/condface-ddpm@champion",
            "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)]
    with server(args, port, fresh_env(store, MLFLOW_MODELS_WORKERS="1"), tmp_path / "serve.log", "/ping", 240):
        body = json.dumps({"dataframe_records": [{"bangs": 5, "eyeglasses": -1}, {"bangs": -1, "eyeglasses": 4}],
                           "params": {"num_inference_steps": 2, "seed": 3}}).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=body,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=120) as resp:
            predictions = json.loads(resp.read())["predictions"]
    assert len(predictions) == 2
    assert predictions[0]["bangs"] == 5 and predictions[1]["eyeglasses"] == 4  # -1 and left out: "any"
    assert all(0 <= p[a] <= 5 for p in predictions for a in ("bangs", "eyeglasses", "beard", "smiling", "age"))
    assert all(decode(p["image"]).shape == (16, 16, 3) for p in predictions)


def generate(store, tmp_path, *args: str, own_process: bool = False) -> subprocess.CompletedProcess:
    """`python -m models.generate ARGS`: in this process (seconds of imports saved), or as a process of its own."""
    if not own_process:
        return run_module("models.generate", *args, cwd=tmp_path, env={"MLFLOW_TRACKING_URI": store["uri"]})
    return subprocess.run([sys.executable, "-m", "models.generate", *args], cwd=tmp_path, capture_output=True,
                          text=True, timeout=600, env=fresh_env(store))


def test_generate_draws_labelled_grids_from_every_kind_of_model_reference(store, tmp_path):
    from PIL import Image

    fin = store["out"]["families"]
    cases = [
        ("alias", ["--model", "models:/condface-ddpm@champion", "--smiling", "5", "--bangs", "0"]),
        ("version", ["--model", "models:/condface-ddpm/1", "--age", "4"]),
        ("run", ["--model", f"runs:/{fin['ddpm']['final']['run_id']}/model"]),
        ("folder", ["--model", fin["ddpm"]["final"]["pipeline_dir"], "--eyeglasses", "3"]),
        ("lora", ["--model", "models:/condface-sd-lora@champion", "--caption", "A man with a beard."]),
        ("lora-folder", ["--model", fin["sd-lora"]["final"]["pipeline_dir"], "--smiling", "5"]),
    ]
    for label, args in cases:
        out = tmp_path / f"{label}.png"
        # the first as the command a user types, a process of its own; the others in this process
        res = generate(store, tmp_path, *args, "-n", "4", "--steps", "2", "--out", str(out), own_process=label == "alias")
        assert res.returncode == 0, (label, res.stderr[-3000:])
        assert "100%" in res.stderr  # sampling progress
        w, h = Image.open(out).size
        assert w == 4 * 128 and h > 128 + 40, (label, w, h)  # 4 tiles of 128 px with labels and a header


@pytest.mark.parametrize("args, message", [
    (["--model", "models:/condface-ddpm@champion", "--hair", "2"], "unknown option --hair"),
    (["--model", "models:/condface-ddpm@champion", "--age", "6"], "--age must be a level 0..5"),
    (["--model", "models:/condface-ddpm@champion", "--caption", "a face"], "--caption is for the text-conditioned families"),
    (["--model", "models:/condface-ddpm@nobody"], "cannot get models:/condface-ddpm@nobody"),
    (["--model", "models:/no-such-model/1"], "cannot get models:/no-such-model/1"),
    (["--model", "/no/such/folder"], "no model at /no/such/folder"),
    (["--model", "models:/condface-ddpm@champion", "--precision", "fp8"], "invalid choice: 'fp8'"),
])
def test_generate_bad_input_is_a_one_line_error(store, tmp_path, args, message):
    res = run_module("models.generate", *args, "--out", str(tmp_path / "x.png"), cwd=tmp_path,
                     env={"MLFLOW_TRACKING_URI": store["uri"]})
    assert res.returncode != 0
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert lines[-1].startswith("error: ") and message in lines[-1], res.stderr[-2000:]
    assert "Traceback" not in res.stderr and not (tmp_path / "x.png").exists()


# --------------------------------------------------------------------------------------------------
# The MLflow UI in a browser
# --------------------------------------------------------------------------------------------------
@pytest.mark.browser
def test_the_mlflow_ui_shows_trials_metrics_images_and_the_champion(store, tmp_path):
    require(os.path.exists(CHROMIUM), f"no Chromium at {CHROMIUM} (apt-get install -y chromium; .ci/run installs it)")
    require(importlib.util.find_spec("playwright") is not None, "no playwright: pip install -e '.[dev]' installs it")
    from playwright import sync_api as playwright

    from orchestration.tracking.checks import artifact_root

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    client = client_for(store["uri"])
    exp = client.get_experiment_by_name(store["cfg"].experiment_name)
    final = store["out"]["families"]["ddpm"]["final"]
    grid = client.search_runs([exp.experiment_id], "tags.`condface.phase` = 'grid'")
    assert len(grid) == 2 * len(store["cfg"].families)  # two smoke trials per family
    # what a person would set up by clicking: the assistant panel closed, the sweep's nested runs expanded, the
    # key metrics and the grid axes as columns (the UI keeps this per experiment in the browser's localStorage)
    table = {"selectedColumns": ["attributes.`Dataset`", "metrics.`val_loss`", "metrics.`est_acc_balanced`",
                                 "metrics.`fd_estimator`", "params.`trial.channels`", "params.`trial.lora_rank`"],
             "runsExpanded": {store["out"]["parent_run_id"]: True}, "columnWidths": {"attributes.`Run Name`": 250}}
    init = ("localStorage.setItem('mlflow.assistant.panelOpen_v1', 'false');"
            "localStorage.setItem('mlflow.assistant.fab.autoOpenedOnFirstLoad_v1', 'true');"
            f"localStorage.setItem('MLflowLocalStorage-1.1-ExperimentPage-[\"{exp.experiment_id}\"]-ReactComponentState',"
            f" {json.dumps(json.dumps(table))});")
    port = free_port()
    args = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", store["uri"],
            "--default-artifact-root", artifact_root(store["uri"]), "-h", "127.0.0.1", "-p", str(port),
            "--workers", "1"]
    base = f"http://127.0.0.1:{port}/#"
    env = fresh_env(store, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")  # no job-runner processes: just the UI
    with server(args, port, env, tmp_path / "ui.log", "/health", 180), playwright.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--no-first-run"])
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            page.set_default_timeout(60_000)
            page.add_init_script(init)

            # the experiment in the model-training view: every trial by name, with its key metrics and the data
            page.goto(f"{base}/experiments/{exp.experiment_id}/runs?workflowType=machine_learning")
            for run in grid:
                page.get_by_text(run.info.run_name, exact=True).first.wait_for()
            page.get_by_text("val_loss", exact=True).first.wait_for()
            page.wait_for_timeout(1500)
            text = page.inner_text("body")
            for run in grid:
                assert str(run.data.metrics["val_loss"]) in text, run.info.run_name
            assert Path(store["data"]).name in text  # the Dataset column
            page.screenshot(path=str(SCREENSHOTS / "experiment-runs.png"))

            # the final run: a metric chart (plotly) and its per-epoch sample image series
            page.goto(f"{base}/experiments/{exp.experiment_id}/runs/{final['run_id']}/model-metrics"
                      "?workflowType=machine_learning")
            page.locator("svg.main-svg").first.wait_for()  # the charts (long lists render lazily: search)
            page.get_by_placeholder("Search metric charts").fill("val_loss|attributes")
            page.get_by_text("val_loss", exact=True).first.wait_for()
            image = page.locator("img[src*='images%2Fattributes']").first
            image.wait_for(state="attached")
            image.scroll_into_view_if_needed()
            page.wait_for_function("e => e.complete && e.naturalWidth > 0", arg=image.element_handle())
            page.wait_for_timeout(1000)
            page.screenshot(path=str(SCREENSHOTS / "final-run-metrics.png"))

            # the registered model with its alias
            page.goto(f"{base}/models/condface-ddpm?workflowType=machine_learning")
            page.get_by_text("Version 1", exact=True).first.wait_for()
            page.get_by_text("champion", exact=False).first.wait_for()
            assert "@ champion" in page.inner_text("body") or "@champion" in page.inner_text("body")
            page.wait_for_timeout(1000)
            page.screenshot(path=str(SCREENSHOTS / "registered-model.png"))
        finally:
            browser.close()
    for name in ("experiment-runs.png", "final-run-metrics.png", "registered-model.png"):
        assert (SCREENSHOTS / name).stat().st_size > 10_000
    print(f"\nMLflow UI screenshots: {SCREENSHOTS}")


def test_a_lora_in_mlflows_diffusers_flavor_loads_and_draws(store, tmp_path):
    """The diffusers flavor (chosen for a LoRA on a Hub base; the Hub is out of reach here, so the tiny base's
    folder stands in for the base reference): MLflow's own pyfunc and models.generate both draw with it."""
    import mlflow
    import pandas as pd

    from models.mlflow_model import choose_flavor, resolve_folder, save_model
    from models.tiny_base import PRESETS, tiny_base_dir

    fin = store["out"]["families"]["sd-lora"]["final"]
    assert choose_flavor(fin["pipeline_dir"])[0] == "pyfunc"  # the tiny offline base: not expressible
    lora = tmp_path / "lora"
    shutil.copytree(fin["pipeline_dir"], lora)
    info = json.loads((lora / "condface_lora.json").read_text())
    info["lora_config"]["pretrained"] = str(tiny_base_dir(PRESETS[info["lora_config"]["tiny_base"]]))
    (lora / "condface_lora.json").write_text(json.dumps(info))
    assert save_model(tmp_path / "model", lora, guidance_scale=3.0, sampler="ddim", num_inference_steps=2,
                      flavor="diffusers") == "diffusers"
    resolved = resolve_folder(tmp_path / "model")
    assert (resolved.family, resolved.flavor, resolved.base) == ("sd-lora", "diffusers", info["lora_config"]["pretrained"])
    out = mlflow.pyfunc.load_model(str(tmp_path / "model")).predict(pd.DataFrame({"prompt": ["A person smiling."]}))
    assert decode(base64.b64encode(out[0]).decode()).shape == (16, 16, 3)  # MLflow's wrapper: PNG bytes
    res = generate(store, tmp_path, "--model", str(tmp_path / "model"), "--smiling", "5", "-n", "2", "--steps", "2",
                   "--out", str(tmp_path / "lora.png"))
    assert res.returncode == 0, res.stderr[-3000:]
