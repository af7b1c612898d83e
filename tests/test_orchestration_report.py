"""`python -m orchestration.report` on a finished smoke sweep of both families (real Ray, real MLflow store):
every table value equals the metric in MLflow, every figure is beside report.md and embedded in report.html, the
HTML references nothing outside itself; the sweep logged its own report; bad input is one line and exit 1.
"""

from __future__ import annotations

import base64
import json
import math
import os
import re
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from tests.test_orchestration_sweep import artifact_paths, children
from tests.tools import JOINT_EXPERIMENT, run_module

ROOT = Path(__file__).resolve().parent.parent
EXPERIMENT = JOINT_EXPERIMENT


@pytest.fixture(scope="module")
def sweep(joint_sweep):
    """The session's finished smoke sweep of the whole study (ddpm,sd-lora) with the sampler phase."""
    return joint_sweep


# --------------------------------------------------------------------------------------------------
# Reading the Markdown back
# --------------------------------------------------------------------------------------------------
def _cells(line: str) -> list[str]:
    return [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]


def md_tables(md: str) -> dict[str, tuple[list[str], list[list[str]]]]:
    out = {}
    for section in re.split(r"^#### ", md, flags=re.M)[1:]:
        m = re.match(r"Table (\S+):", section)
        if not m:
            continue
        lines = [ln for ln in section.splitlines() if ln.startswith("|")]
        out[m.group(1)] = (_cells(lines[0]), [_cells(ln) for ln in lines[2:]])
    return out


def shown(cell: str) -> tuple[float, int] | None:
    """(number, decimals shown) at the start of a cell, or None (unavailable / missing / label)."""
    m = re.match(r"^(-?[\d,]+(?:\.(\d+))?)", cell)
    return (float(m.group(1).replace(",", "")), len(m.group(2) or "")) if m else None


def assert_shows(cell: str, key: str, value: float, n: float | None = None, what: str = "") -> None:
    got = shown(cell)
    assert got is not None, (what, key, cell)
    number, decimals = got
    expected = 100 * value if key.startswith("est_acc") else value
    assert abs(number - expected) <= 0.5 * 10 ** -decimals + 1e-9, (what, key, cell, value)
    if n is not None:
        assert f"(n={int(n)})" in cell, (what, key, cell, n)


def metric_key(row: list[str]) -> str:
    return re.search(r"`([^`]+)`", row[0]).group(1)


def best(client, runs, key: str):
    from data.catalogue import better

    values = [(m.value, r, m.step) for r in runs for m in client.get_metric_history(r.info.run_id, key)
              if math.isfinite(m.value)]
    if not values:
        return None
    pick = min if better(key) == "min" else max
    return pick(values, key=lambda v: v[0])


# --------------------------------------------------------------------------------------------------
def test_report_equals_the_mlflow_record(sweep, tmp_path):
    from orchestration.report.build import write_report

    client, parent_id, uri = sweep["client"], sweep["parent"], sweep["cfg"].tracking_uri
    out, report = write_report(uri, EXPERIMENT, None, tmp_path / "report")  # default --run: the latest sweep
    md = (out / "report.md").read_text()
    page = (out / "report.html").read_text()
    tables = md_tables(md)
    assert {"3.1", "4.1", "4.2", "4.3", "4.4", "4.8-ddpm", "4.8-sd-lora", "4.9", "S-ddpm", "S-sd-lora", "P"} <= set(tables)
    assert report.missing == [], report.missing  # a finished sweep of both families lacks nothing

    runs = children(client, parent_id)
    by = {}
    for r in runs:
        by.setdefault((r.data.tags["condface.phase"], r.data.tags["condface.family"]), []).append(r)
    from data.catalogue import FAMILY_INFO

    families = tuple(FAMILY_INFO)  # the joint sweep runs every family
    finals = {f: by[("final", f)][0] for f in families}
    refs = {**{FAMILY_INFO[f].untrained: (by[("reference", f)][0], "untrained") for f in families},
            "ground truth": (by[("reference", "real")][0], "ground_truth"),
            "real held-out (this project)": (by[("reference", "real")][0], "real_held_out")}
    checked = 0

    def check_cell(cell, key, metrics, name, n_name, unavailable, what):
        nonlocal checked
        if name in metrics:
            assert_shows(cell, key, metrics[name], metrics.get(n_name), what)
            checked += 1
        elif key in unavailable:  # named with its reason (a footnote), never a number
            assert cell.startswith("unavailable ["), (what, key, cell)
            note = int(re.search(r"\[(\d+)\]", cell).group(1))
            assert f"[{note}] {key} unavailable: {unavailable[key][:40]}" in md
        else:
            assert shown(cell) is None, (what, key, cell)

    def unavailable(run):
        return {k.split(".", 2)[2]: v for k, v in run.data.tags.items() if k.startswith("condface.unavailable.")}

    # Tables 3.1 and 4.4: every reference and final cell is the run's metric, with its count
    for number in ("3.1", "4.4"):
        header, rows = tables[number]
        for row in rows:
            key = metric_key(row)
            n_key = "est_acc_n" if key.startswith("est_acc") else f"{key}_n"
            for col, cell in zip(header[1:], row[1:]):
                if col.endswith(" final"):
                    run = finals[col[: -len(" final")]]
                    check_cell(cell, key, run.data.metrics, f"final_{key}", f"final_{n_key}", unavailable(run),
                               (number, col))
                else:
                    run, prefix = refs[col]
                    metrics = {**run.data.metrics}
                    metrics.setdefault(f"{prefix}.{n_key}", float(run.data.params["ref.samples"]))
                    check_cell(cell, key, metrics, f"{prefix}.{key}", f"{prefix}.{n_key}", unavailable(run),
                               (number, col))
    assert "[study: 86.40%]" in md and "[study: 104.52]" in md and "[study: 70.60%]" in md

    # Tables 4.1 / 4.3: each grid's best at any epoch (value and count at that epoch); Table 4.2 per channel set
    for number, family in (("4.1", "ddpm"), ("4.3", "sd-lora")):
        grid = by[("grid", family)]
        for row in tables[number][1]:
            key = metric_key(row)
            found = best(client, grid, key)
            if found is None:
                assert shown(row[1]) is None, (number, row)
                continue
            value, run, step = found
            n = {m.step: m.value for m in client.get_metric_history(
                run.info.run_id, "est_acc_n" if key.startswith("est_acc") else f"{key}_n")}.get(step)
            if key == "val_loss":  # the held-out loss: over the run's fixed validation items
                n = float(run.data.params["train.val_samples"])
            assert_shows(row[1], key, value, n, number)
            assert row[-1] == str(step), row
            checked += 1
    header, rows = tables["4.2"]
    groups = {g: [r for r in by[("grid", "ddpm")] if r.data.params["trial.channels"] == g] for g in ("small", "large")}
    assert header[1].startswith("small [16,64]") and header[2].startswith("large [32,64]"), header
    for row in rows:
        key = metric_key(row)
        for g, cell in zip(("small", "large"), row[1:]):
            found = best(client, groups[g], key)
            if found:
                assert_shows(cell, key, found[0], None, ("4.2", g))
                checked += 1

    # the CFG tables: one row per scale, equal to the cfg run's metric at that step
    for family in ("ddpm", "sd-lora"):
        run = by[("cfg", family)][0]
        scales = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "guidance_scale")}
        header, rows = tables[f"4.8-{family}"]
        assert [float(r[0]) for r in rows] == [scales[s] for s in sorted(scales)]
        for step, row in zip(sorted(scales), rows):
            for key, cell in zip(header[1:4], row[1:4]):
                hist = {m.step: m.value for m in client.get_metric_history(run.info.run_id, key)}
                assert_shows(cell, key, hist[step], 8, ("cfg", family))
                checked += 1
        front = run.data.tags["condface.pareto_scales"].split(",")
        assert sorted(r[0] for r in rows if r[-1] == "*") == sorted(front)
        # the sampler phase: one row per setting
        run = by[("samplers", family)][0]
        nfe = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "nfe")}
        header, rows = tables[f"S-{family}"]
        assert [int(r[1]) for r in rows] == [int(nfe[s]) for s in sorted(nfe)] == [2, 4, 2, 4]
        assert [r[0] for r in rows] == ["ddim", "ddim", "dpm++", "dpm++"]
        for step, row in zip(sorted(nfe), rows):
            for key, cell in zip(header[2:5], row[2:5]):
                hist = {m.step: m.value for m in client.get_metric_history(run.info.run_id, key)}
                assert_shows(cell, key, hist[step], None, ("samplers", family))
                checked += 1

    # Table 4.9: the parameter counts the final runs logged
    for row in tables["4.9"][1]:
        family = row[0].split()[0]
        params = finals[family].data.params
        assert row[1].startswith(f"{int(params['built.params_total']):,} ")
        assert row[3].startswith(f"{int(params['built.params_trainable']):,} ")
        checked += 2
    # Figure C's data: the final evaluation's confusion matrices, whose diagonals give the logged balanced accuracy
    for family, run in finals.items():
        with tempfile.TemporaryDirectory() as tmp:
            local = client.download_artifacts(run.info.run_id, "final_samples/final_confusion.json", tmp)
            confusion = json.loads(Path(local).read_text())
        assert list(confusion) == ["bangs", "eyeglasses", "beard", "smiling", "age"], family
        cms = np.array([confusion[a] for a in confusion], dtype=float)
        assert cms.shape == (5, 6, 6) and (cms.sum(axis=(1, 2)) == run.data.metrics["final_est_acc_n"]).all()
        support = cms.sum(2)
        recall = np.diagonal(cms, axis1=1, axis2=2) / np.where(support > 0, support, np.nan)
        assert np.nanmean(recall, axis=1).mean() == pytest.approx(run.data.metrics["final_est_acc_balanced"])
        checked += 1
    # the provenance appendix: the parent run's tags
    tags = client.get_run(parent_id).data.tags
    prov = dict((r[0], r[1]) for r in tables["P"][1])
    for key in ("git_commit", "git_dirty", "torch", "diffusers", "peft", "transformers", "ray", "mlflow",
                "data_manifest_sha256", "data_source", "seed"):
        assert tags[f"condface.provenance.{key}"], key
        assert prov[key] == tags[f"condface.provenance.{key}"].replace("\n", " "), key
    assert checked > 60, checked

    # Figure 4.6's data: the loss per optimizer step of both final runs, each step once, increasing
    for family, run in finals.items():
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "train_loss_step")]
        assert steps and steps == sorted(set(steps)), (family, steps)
        assert steps[-1] == int(run.data.metrics["step"]), (family, steps)

    # every figure beside report.md and embedded in report.html; nothing outside the page is referenced
    files = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    expected = {"fig4.1_ddpm_grid_samples.png", "fig4.2_sd-lora_grid_samples.png", "fig4.3_ddpm_final_samples.png",
                "fig4.4_sd-lora_final_samples.png", "fig4.5_ddpm_attributes.png", "fig4.5_sd-lora_attributes.png",
                "fig4.6_loss_per_step.png", "fig4.7_metrics_per_epoch.png", "fig4.8_cfg_pareto.png",
                "fig4.9_parameters.png", "figS_ddpm_samplers.png", "figS_sd-lora_samplers.png",
                "real_epoch_samples.png", "real_final_samples.png", "real_attributes.png",
                "figC_ddpm_final_confusion.png", "figC_sd-lora_final_confusion.png", "real_confusion.png"}
    assert expected <= set(files), expected - set(files)
    for name in set(files):
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n", name
        assert f"data:image/png;base64,{base64.b64encode(data).decode()}" in page, name
    assert page.count("<img ") == len(files)
    assert not re.search(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", page, re.I)
    assert not re.search(r"""url\(\s*["']?\s*(?:https?:)?//""", page, re.I)
    assert not re.search(r"<(?:script|link|iframe)\b", page, re.I)
    assert not list(out.parent.glob(".report.*"))  # nothing temporary left beside it

    # the sweep wrote its own report: artifacts of its parent run, and the tables as the run's description
    logged = artifact_paths(client, parent_id, "report")
    assert {"report/report.html", "report/report.md", "report/fig4.8_cfg_pareto.png"} <= logged, logged
    assert {"real/epoch_samples.png", "real/final_samples.png", "real/attributes.png"} <= artifact_paths(
        client, parent_id, "real")
    note = tags["mlflow.note.content"]
    assert "#### Table 4.4" in note and "#### Table 3.1" in note and len(note) <= 8000
    assert (Path(next(iter(sweep["tmp"].glob("results/*/report/report.html")))).is_file())


def test_a_partial_record_says_what_is_missing(sweep):
    """A sweep still running (a parent with one grid trial so far) shows what exists and lists what it lacks."""
    from orchestration.report.build import build
    from orchestration.report.record import Record
    from orchestration.report.render import render_markdown

    client = sweep["client"]
    exp = client.create_experiment("partial")
    parent = client.create_run(exp, tags={"condface.phase": "sweep", "mlflow.runName": "sweep/partial"})
    for k, v in {"model": "ddpm,sd-lora", "final_epochs": "2", "sampler_phase": "False"}.items():
        client.log_param(parent.info.run_id, k, v)
    trial = client.create_run(exp, tags={"condface.phase": "grid", "condface.family": "ddpm",
                                         "mlflow.parentRunId": parent.info.run_id,
                                         "mlflow.runName": "grid:ga1-T1000-snroff-small",
                                         "condface.unavailable.fid": "no Inception weights here"})
    client.log_metric(trial.info.run_id, "fd_estimator", 12.5, step=1)
    client.log_metric(trial.info.run_id, "fd_estimator_n", 8, step=1)
    rec = Record.load(sweep["cfg"].tracking_uri, "partial")
    report = build(rec)
    md = render_markdown(report)
    assert "This sweep is still running" in md
    assert "12.500 (n=8)" in md and "unavailable [1]" in md and "no Inception weights here" in md
    lacks = "\n".join(report.missing)
    for text in ("sd-lora: no grid trial logged yet", "ddpm: no final run yet", "sd-lora: no final run yet",
                 "no reference run of real images", "ddpm: 1 grid trial(s) still running", "provenance"):
        assert text in lacks, (text, lacks)
    assert "sampler" not in lacks  # the sweep did not ask for the sampler phase


def _report_cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return run_module("orchestration.report", *args, cwd=cwd)


def _report_command(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """The real `python -m orchestration.report`, a process of its own."""
    return subprocess.run([sys.executable, "-m", "orchestration.report", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_cli_defaults_and_bad_input(sweep, tmp_path):
    tmp, uri = sweep["tmp"], sweep["cfg"].tracking_uri
    # defaults: the store in the working directory, the latest sweep, ./reports/<its run name>
    ok = _report_command(["--experiment", EXPERIMENT], cwd=tmp)
    assert ok.returncode == 0, ok.stderr[-2000:]
    name = sweep["client"].get_run(sweep["parent"]).info.run_name.replace("/", "_")
    assert (tmp / "reports" / name / "report.html").is_file() and (tmp / "reports" / name / "report.md").is_file()

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    child = children(sweep["client"], sweep["parent"])[0].info.run_id
    cases = [
        (["--tracking-uri", uri, "--experiment", "nope"], "no experiment 'nope'"),
        (["--tracking-uri", uri, "--experiment", EXPERIMENT, "--run", "0" * 32], "no run '" + "0" * 32),
        (["--tracking-uri", uri, "--experiment", EXPERIMENT, "--run", child], "not a sweep's parent run"),
        (["--tracking-uri", f"http://127.0.0.1:{port}", "--experiment", EXPERIMENT], "cannot reach the MLflow server"),
        (["--tracking-uri", f"sqlite:///{tmp_path / 'none.db'}", "--experiment", EXPERIMENT], "no MLflow store"),
        (["--tracking-uri", uri, "--experiment", EXPERIMENT, "--out", str(a_file / "report")], "is not writable"),
    ]
    for args, message in cases:
        res = _report_cli([*args] if "--out" in args else [*args, "--out", str(tmp_path / "never")], cwd=tmp_path)
        lines = res.stderr.strip().splitlines()
        assert res.returncode == 1 and lines and lines[-1].startswith("error: ") and message in lines[-1], (args, res.stderr)
        assert not (tmp_path / "never").exists() and not list(tmp_path.glob(".never*"))
    assert not (tmp_path / "none.db").exists()  # reading never creates a store


def test_report_input_checks_load_neither_mlflow_nor_ray():
    """The command's checks of its input answer before MLflow or Ray is loaded (the names it shares with the
    tracker come from data.catalogue)."""
    code = ("import sys; from orchestration.report import cli, record; "
            "print(sorted(m for m in ('mlflow', 'ray') if m in sys.modules))")
    res = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(ROOT)},
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and res.stdout.strip() == "[]", res.stderr[-2000:]


def test_loss_per_step_is_logged_once_per_step(tmp_path):
    """A trial resumed from an older checkpoint reports an epoch's step losses again: each step is logged once,
    also by a new driver (a fresh Tracker reads what the run already has)."""
    from data.catalogue import STEP_LOSS_METRIC
    from orchestration.tracking.client import Tracker

    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    tracker = Tracker(uri, "steps")
    run = tracker.open_run("k", "trial")
    assert tracker.log_series(run, STEP_LOSS_METRIC, [[10, 0.5], [20, 0.4], [24, 0.35]]) == 3
    assert tracker.log_series(run, STEP_LOSS_METRIC, [[20, 0.4], [24, 0.35], [30, 0.3]]) == 1
    again = Tracker(uri, "steps")  # the driver restarted (--resume)
    assert again.log_series(run, STEP_LOSS_METRIC, [[24, 0.35], [30, 0.3], [34, float("nan")], [40, 0.25]]) == 1
    steps = [m.step for m in again.client.get_metric_history(run, STEP_LOSS_METRIC)]
    assert sorted(steps) == [10, 20, 24, 30, 40]


def test_provenance_without_git(monkeypatch, tmp_path):
    from orchestration import provenance

    monkeypatch.setattr(provenance, "ROOT", tmp_path)  # not a repository
    tags = provenance.provenance_tags(None, 3)
    assert tags["condface.provenance.git_commit"] == "unknown" and tags["condface.provenance.git_dirty"] == "unknown"
    assert tags["condface.provenance.seed"] == "3" and tags["condface.provenance.mlflow"]
    earlier = {"condface.provenance.git_commit": "abc"}
    assert provenance.provenance_tags(None, 3, earlier)["condface.provenance.first_commit"] == "abc"


def test_study_numbers_are_the_sources():
    """Every cited number appears, as the study printed it, in the study's source text."""
    from orchestration.report import study_numbers as s

    source = ROOT.parent / "shared" / "seeds" / "000_e10f724a4b28bbeb.txt"
    if not source.is_file():
        pytest.skip("the study's source text is not beside this checkout")
    text = source.read_text()

    def printed(key: str, v: float) -> str:
        return f"{100 * v:.2f} %" if key == "est_acc" else f"{v:.2f} %" if key == "mtcnn" else f"{v:.4f}"

    tables = [*s.TABLE_3_1.values(), *s.TABLE_4_2.values(), *s.TABLE_4_4.values(),
              *({k: v[0]} for t in (s.TABLE_4_1, s.TABLE_4_3) for k, v in t.items())]
    for table in tables:
        for key, value in table.items():
            want = printed(key, value)
            assert want in text or (value == 0.0 and "\t0.0\n" in text), (key, want)


def test_the_studys_method_figures_and_conclusions_from_the_sweep(sweep, tmp_path):
    """Figures 3.2-3.4 are logged by the sweep (artifacts the report shows, and images of the runs); Figure 4.10
    says why it is absent; the conclusions compare the two final models with their sample counts."""
    from orchestration.report.build import write_report
    from orchestration.report.superres import NOT_REQUESTED

    client, parent, cfg = sweep["client"], sweep["parent"], sweep["cfg"]
    logged = artifact_paths(client, parent)
    assert {"real/dataset.png", "real/augmentation.png", "real/augmentation.json"} <= logged
    for key in ("figure_3.2_dataset", "figure_3.3_augmentation"):
        assert any(p.startswith(f"images/{key}+step+0+") for p in logged), key
    refs = {r.data.tags["condface.family"]: r for r in children(client, parent)
            if r.data.tags["condface.phase"] == "reference"}
    for family, row in (("ddpm", "untrained"), ("sd-lora", "untrained"), ("real", "ground_truth")):
        paths = artifact_paths(client, refs[family].info.run_id)
        assert f"reference/{row}.png" in paths and any(p.startswith(f"images/reference_{row}+") for p in paths)

    out, report = write_report(cfg.tracking_uri, EXPERIMENT, parent, tmp_path / "report")
    md = (out / "report.md").read_text()
    for name in ("fig3.2_dataset.png", "fig3.3_augmentation.png", "fig3.4_ddpm_untrained.png",
                 "fig3.4_sd-lora_untrained.png", "fig3.4_real_ground_truth.png"):
        assert (out / name).is_file() and f"({name})" in md, name
    assert "#### Figure 4.10" in md and NOT_REQUESTED in md
    assert "This run's comparisons are about this machine's stand-ins, not the real models" in md
    conclusions = next(t for t in report.tables if t.key == "5")
    rows = [[c.text for c in r] for r in conclusions.rows]
    start = next(i for i, r in enumerate(rows) if r[0].startswith("attribute DDPM vs SD Nano"))
    assert rows[start][1] == "est_acc"
    assert [c.n for c in conclusions.rows[start][2:4]] == [cfg.final_samples, cfg.final_samples]
    assert "seed-to-seed spread not measured" in rows[start][5]
