"""The write-counting kill hook, and each idempotent write a killed driver's resume relies on, on a real MLflow
SQLite store (issue 21's windows 2-6; the whole sweep killed at write points: test_orchestration_phases)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def uri(tmp_path_factory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('crash-units') / 'mlruns.db'}"


@pytest.fixture
def tracker(uri, request):
    from orchestration.tracking.client import Tracker

    return Tracker(uri, request.node.name[:60])


KILLED_SCRIPT = """
import subprocess, sys
from orchestration.faults import reached
from orchestration.tracking.client import Tracker
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
print("child", child.pid, flush=True)
tracker = Tracker(sys.argv[1], "killed")           # write 1: create_experiment
run = tracker.open_run("k", "k")                    # write 2: create_run
print("run", run, flush=True)
reached("phase")
tracker.log_metrics(run, {"a": 1.0}, step=1)        # write 3 (1 of phase): log_batch
tracker.set_tags(run, {"x": "y"})                   # write 4 (2 of phase): log_batch
print("survived", flush=True)
"""


@pytest.mark.slow  # a process of its own
def test_the_driver_and_its_children_are_killed_before_the_kth_mlflow_write_of_a_phase(tmp_path):
    import psutil
    from mlflow.tracking import MlflowClient

    from orchestration.faults import KILL_AT_WRITE_ENV, WRITE_LOG_ENV

    db = f"sqlite:///{tmp_path / 'k.db'}"
    env = {**os.environ, "PYTHONPATH": str(ROOT), KILL_AT_WRITE_ENV: "2@phase", WRITE_LOG_ENV: str(tmp_path / "w.tsv")}
    proc = subprocess.run([sys.executable, "-c", KILLED_SCRIPT, db], env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == -9, proc.stdout + proc.stderr
    assert "[fault] SIGKILL before MLflow write 4 (log_batch; write 2 of phase)" in proc.stdout
    assert "survived" not in proc.stdout
    lines = [tuple(ln.split("\t")) for ln in (tmp_path / "w.tsv").read_text().splitlines()]
    assert lines == [("1", "create_experiment", "setup"), ("2", "create_run", "setup"), ("3", "log_batch", "phase"),
                     ("4", "log_batch", "phase")]
    child = int(proc.stdout.split("child ")[1].split()[0])
    deadline = time.time() + 10
    while psutil.pid_exists(child) and psutil.Process(child).status() != psutil.STATUS_ZOMBIE:
        assert time.time() < deadline, "the driver's child outlived it"
        time.sleep(0.1)
    run = MlflowClient(db).get_run(proc.stdout.split("run ")[1].split()[0])
    assert "a" in run.data.metrics and "x" not in run.data.tags  # write 3 happened, write 4 did not


def test_an_after_write_kill_lands_once_the_write_returned(tracker, monkeypatch):
    from orchestration import faults

    class Killed(Exception):
        pass

    def kill():
        raise Killed

    monkeypatch.setattr(faults, "kill_process_tree", kill)
    counter = faults.WriteCounter("+2@phase")
    client = faults.CountedWrites(tracker.client, counter)
    run = client.create_run(tracker.experiment_id).info.run_id  # counted before the phase: no kill
    counter.reached("phase")
    client.set_tag(run, "x", "1")
    client.get_run(run)  # a read: not counted
    with pytest.raises(Killed):
        client.set_tag(run, "y", "2")
    assert (counter.total, counter.since) == (3, 2)
    assert tracker.client.get_run(run).data.tags["y"] == "2"  # the write was done before the kill


def test_kill_specs_are_read_or_refused_in_a_line():
    from orchestration.faults import parse_kill_spec

    assert parse_kill_spec("7") == (7, None, False)
    assert parse_kill_spec("+3@ddpm/final:trained") == (3, "ddpm/final:trained", True)
    assert parse_kill_spec("random:4:100") == parse_kill_spec("random:4:100")  # seeded
    assert 1 <= parse_kill_spec("random:4:100")[0] <= 100
    with pytest.raises(ValueError, match="expected"):
        parse_kill_spec("0@ddpm/grid")


def test_champion_moves_onto_the_version_a_killed_driver_registered(tracker):
    """Window 2: killed between create_model_version and the alias; the resumed register() moves the alias."""
    from orchestration.phases.final import register

    client, name = tracker.client, "crash-w2"
    old, new = tracker.open_run("old", "old sweep's final"), tracker.open_run("new", "this sweep's final")
    client.create_registered_model(name)
    v1 = client.create_model_version(name, f"runs:/{old}/model", run_id=old)
    client.set_registered_model_alias(name, "champion", v1.version)
    v2 = client.create_model_version(name, f"runs:/{new}/model", run_id=new)  # ... and here the driver died

    assert register(tracker, new, Path("unused"), name, {"family": "ddpm"}) == f"models:/{name}/{v2.version}"
    assert client.get_model_version_by_alias(name, "champion").version == v2.version
    assert len(client.search_model_versions(f"name = '{name}'")) == 2  # nothing registered twice


def _save(path: Path, mlflow_model) -> None:
    path.mkdir(parents=True)
    (path / "weights.bin").write_bytes(b"w" * 1000)


def _outputs(tracker, run_id: str) -> list[str]:
    return [o.model_id for o in tracker.client.get_run(run_id).outputs.model_outputs]


def test_a_pending_logged_model_is_finished_and_a_ready_one_linked_once(tracker):
    """Window 3: a kill during the upload leaves a PENDING model, one after READY an unlinked one; resumed
    log_model() finishes the same model (never a second) and links it to the run once."""
    run = tracker.open_run("pending", "pending")
    pending = tracker.client.create_logged_model(tracker.experiment_id, name="model", source_run_id=run)
    model_id, _ = tracker.log_model(run, "model", _save)
    assert model_id == pending.model_id
    assert str(tracker.client.get_logged_model(model_id).status).endswith("READY")
    assert _outputs(tracker, run) == [model_id]

    run = tracker.open_run("unlinked", "unlinked")
    ready = tracker.client.create_logged_model(tracker.experiment_id, name="model", source_run_id=run)
    tracker.client.finalize_logged_model(ready.model_id, "READY")  # ... and here the driver died
    for _ in range(2):
        assert tracker.log_model(run, "model", _save)[0] == ready.model_id
    assert _outputs(tracker, run) == [ready.model_id]
    found = tracker.client.search_logged_models([tracker.experiment_id],
                                                filter_string=f"source_run_id = '{run}'").to_list()
    assert len(found) == 1


def test_an_interrupted_estimator_record_is_completed(tracker, tmp_path):
    """Window 4: the params were logged, then the driver died: the resumed log_estimator uploads the rest."""
    est = tmp_path / "estimator"
    est.mkdir()
    (est / "config.json").write_text(json.dumps({"config": {"preset": "tiny", "epochs": 2}}))
    (est / "report.json").write_text(json.dumps({"val": {"est_acc": 0.5, "est_acc_balanced": 0.4},
                                                 "train_seconds": 3.0}))
    (est / "estimator.safetensors").write_bytes(b"0" * 64)
    run = tracker.open_run("estimator", "estimator")
    tracker.log_params(run, {"estimator.preset": "tiny"})  # ... and here the driver died
    for _ in range(2):
        tracker.log_estimator(run, est)
    files = {f.path for f in tracker.client.list_artifacts(run, "estimator")}
    assert files == {"estimator/config.json", "estimator/report.json", "estimator/estimator.safetensors"}
    assert tracker.client.get_run(run).data.params["estimator.epochs"] == "2"
    assert [m.value for m in tracker.client.get_metric_history(run, "estimator_val_acc")] == [0.5]


def test_rows_without_a_step_are_logged_once(tracker):
    """Window 5: a rerun of a reference row (or the parent's final_<family>.*) keeps the first values."""
    run = tracker.open_run("rows", "rows")
    assert tracker.log_once(run, {"untrained.fid": 1.0}) == {"untrained.fid": 1.0}
    assert tracker.log_once(run, {"untrained.fid": 2.0, "untrained.kid": 3.0}) == {"untrained.fid": 1.0,
                                                                                    "untrained.kid": 3.0}
    assert [m.value for m in tracker.client.get_metric_history(run, "untrained.fid")] == [1.0]


def test_an_epochs_image_is_logged_once_also_by_a_restarted_driver(tracker, uri, tmp_path):
    """Window 6: Tune restores a trial from an older checkpoint, its epoch's images come again."""
    from PIL import Image

    from orchestration.tracking.client import Tracker

    png = tmp_path / "attributes.png"
    Image.new("RGB", (8, 8), "red").save(png)
    run = tracker.open_run("images", "images")
    assert tracker.log_image(run, png, "attributes", 1)
    assert not Tracker(uri, tracker.experiment).log_image(run, png, "attributes", 1)  # the resumed driver's
    assert tracker.log_image(run, png, "attributes", 2)
    pngs = [f.path for f in tracker.client.list_artifacts(run, "images") if f.path.endswith(".png")]
    assert len(pngs) == 2 and sum("+step+1+" in p for p in pngs) == 1


# --- the hold of the outage and node-kill variants (orchestration.crash) ------------------------------------------
def _blocked(fn, release: Path, timeout: float = 10.0):
    """Run `fn` in a thread: whether it was still blocked before `release` existed, then (once released) done."""
    import threading

    thread = threading.Thread(target=fn, daemon=True)
    thread.start()
    thread.join(1.5)
    held = thread.is_alive()
    release.write_text("released\n")
    thread.join(timeout)
    return held, not thread.is_alive()


def test_a_hold_at_a_write_waits_for_the_release_before_the_write(tracker, tmp_path, monkeypatch, capsys):
    from orchestration import faults

    release = tmp_path / "released"
    monkeypatch.setenv(faults.RELEASE_ENV, str(release))
    counter = faults.WriteCounter(hold="2@phase")
    client = faults.CountedWrites(tracker.client, counter)
    run = client.create_run(tracker.experiment_id).info.run_id
    counter.reached("phase")
    client.set_tag(run, "a", "1")
    held, done = _blocked(lambda: client.set_tag(run, "b", "2"), release)
    assert held and done
    assert "[fault] held before MLflow write 3 (set_tag; write 2 of phase)" in capsys.readouterr().out
    assert tracker.client.get_run(run).data.tags["b"] == "2"  # the write went on after the release
    client.set_tag(run, "c", "3")  # once: no second hold
    assert counter.hold_at is None


def test_a_hold_at_a_point_waits_once_and_a_hold_without_release_file_is_refused(tmp_path, monkeypatch, capsys):
    from orchestration import faults

    monkeypatch.setattr(faults, "_held_at", None)
    monkeypatch.setenv(faults.HOLD_ENV, "@ddpm/grid")
    monkeypatch.setenv(faults.RELEASE_ENV, str(tmp_path / "released"))
    faults.reached("ddpm/reference")  # another point: no hold
    held, done = _blocked(lambda: faults.reached("ddpm/grid"), tmp_path / "released")
    assert held and done and "[fault] held at ddpm/grid" in capsys.readouterr().out
    monkeypatch.delenv(faults.RELEASE_ENV)
    with pytest.raises(RuntimeError, match=faults.RELEASE_ENV):
        faults.hold("at x")


def test_the_harness_makes_its_fault_once_then_releases_then_recovers(tmp_path):
    from orchestration.crash.harness import holder

    steps: list[str] = []
    release = tmp_path / "released"

    def fault(line: str):
        steps.append(f"fault {line.split()[2]} released={release.exists()}")
        return lambda: steps.append(f"recover released={release.exists()}")

    done: list[str] = []
    watch = holder(release, fault, done)
    watch("starting\n")
    assert steps == [] and not release.exists()
    for _ in range(2):
        watch("starting\n[fault] held before MLflow write 7 (log_batch; write 3 of ddpm/grid) (...)\n")
    assert steps == ["fault before released=False", "recover released=True"] and len(done) == 1


def test_the_variants_settings_are_checked_in_a_line():
    from orchestration.crash.cli import NODE_KILL_PHASES, CrashConfig, points, problems

    assert problems(CrashConfig(outage=True, node_kill=True, at=("1",)))[0].startswith("--outage and --node-kill")
    assert "--all-phases" in problems(CrashConfig(node_kill=True))[0]
    assert problems(CrashConfig(all_phases=True, at=("1",))) == ["--all-phases goes with --node-kill"]
    assert [p for p, _ in points(CrashConfig(node_kill=True, all_phases=True), [])] == list(NODE_KILL_PHASES)
    writes = [(1, "create_run", "setup"), (2, "log_batch", "ddpm/grid")]
    assert points(CrashConfig(outage=True, sample=1, seed=0), writes) == \
        points(CrashConfig(sample=1, seed=0), writes)  # the same points as the kills


def test_a_long_run_goes_on_where_it_stopped_and_counts_what_it_tried_before(tmp_path, capsys):
    """The ledger of python -m orchestration.crash_points --work: points tried on this code are not tried again,
    those of other code are; the totals count both runs; two points at a time give the same lines."""
    from orchestration.crash.cli import Ledger, try_points
    from orchestration.crash.harness import CrashResult

    attempted: list[str] = []

    def attempt(spec: str, work: Path) -> CrashResult:
        attempted.append(spec)
        work.mkdir(parents=True, exist_ok=True)  # as the harness, which empties it first
        (work / "1.log").write_text("a sweep\n")
        (work / "mlruns.db").write_text("a store\n")
        return CrashResult([spec], [], ["the parent RUNNING"] if spec == "2" else [], 1.0, [work / "1.log"], [0])

    todo = [("1", "create_run in setup"), ("2", "log_batch in ddpm/grid"), ("3", "set_tag in sweep/closing")]
    ledger_path = tmp_path / "points-kill.tsv"
    assert try_points(todo[:2], attempt, tmp_path, 1, Ledger(ledger_path, "v1")) == (2, 1)
    assert not (tmp_path / "point-1" / "mlruns.db").exists() and (tmp_path / "point-2" / "mlruns.db").exists()
    assert try_points(todo, attempt, tmp_path, 2, Ledger(ledger_path, "v1")) == (3, 1)  # goes on: point 3 only
    assert attempted == ["1", "2", "3"]
    out = capsys.readouterr().out
    assert "2 point(s) tried before on this code" in out and "[1/1] 3 (set_tag in sweep/closing): ok" in out
    assert "[2/2] 2 (log_batch in ddpm/grid): 1 violation(s)" in out and "    the parent RUNNING" in out
    assert try_points(todo[:1], attempt, tmp_path, 1, Ledger(ledger_path, "v2")) == (1, 0)  # other code: again
    assert attempted[-1] == "1" and "3 line(s) of" in capsys.readouterr().out
