"""Every figure of the report sits under its section, by name, with one family and with two.

The record is written straight into a real MLflow store (SQLite in tmp_path): a parent run, each family's grid
trial, final run and reference row, the real-image rows, with the tags, metrics and PNG artifacts the report
reads. Nothing is trained, so the test takes seconds.
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest

GRIDS, FINALS, PARAMETERS = "The grids (§4.1, §4.2)", "The final models (§4.3)", "Parameters (Figure 4.9)"
DATA, REFERENCES, SUPERRES = "The data (§3.3, §3.4)", "Reference rows (the study's §3.5)", "Super-resolution (Figure 4.10)"
SECTION = {"3.1": DATA, "3.2": DATA, "3.3": DATA, "3.4": REFERENCES, "4.1": GRIDS, "4.2": GRIDS, "4.3": FINALS, "4.4": FINALS,
           "C": FINALS, "4.5": FINALS, "4.6": FINALS, "4.7": FINALS, "4.9": PARAMETERS, "4.10": SUPERRES}
SHOWN = {"fig3.2_dataset.png", "fig3.3_augmentation.png", "fig3.4_real_ground_truth.png"}  # beside report.md
FAMILY_FIGURES = {"ddpm": {"4.1", "4.3"}, "sd-lora": {"3.1", "4.2", "4.4"}}  # 3.1: sd-lora's vae phase


def _png(tmp: Path, name: str) -> Path:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (4, 4), (200, 100, 50)).save(buf, format="PNG")
    path = tmp / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.getvalue())
    return path


def _child(client, exp: str, parent: str, phase: str, family: str, name: str):
    return client.create_run(exp, run_name=name, tags={"condface.phase": phase, "condface.family": family,
                                                       "mlflow.parentRunId": parent}).info.run_id


def _artifact(client, run: str, tmp: Path, path: str) -> None:
    folder, _, name = path.rpartition("/")
    client.log_artifact(run, str(_png(tmp / run, name)), folder)


def _family(client, exp: str, parent: str, family: str, tmp: Path) -> None:
    grid = _child(client, exp, parent, "grid", family, f"grid:{family}-a")
    for epoch, (fd, acc) in enumerate([(30.0, 0.4), (20.0, 0.5)], 1):
        for key, value in {"fd_estimator": fd, "fd_estimator_n": 8, "est_acc": acc, "est_acc_n": 8}.items():
            client.log_metric(grid, key, value, step=epoch)
    _artifact(client, grid, tmp, "samples/epoch_0002/samples.png")
    client.set_terminated(grid)
    client.set_tag(parent, f"condface.best_config.{family}", f"{family}-a")

    final = _child(client, exp, parent, "final", family, f"final:{family}-a")
    for key, value in {"final_fd_estimator": 15.0, "final_est_acc": 0.6, "final_est_acc_n": 8,
                       "final_evaluated": 1}.items():
        client.log_metric(final, key, value)
    for step, loss in ((10, 0.5), (20, 0.4)):
        client.log_metric(final, "train_loss_step", loss, step=step)
    client.log_metric(final, "est_acc", 0.6, step=1)
    for key, value in {"built.params_total": 1000, "built.params_trainable": 500, "train.epochs": 1}.items():
        client.log_param(final, key, value)
    for path in ("final_samples/final_samples.png", "final_samples/final_confusion.png",
                 "samples/epoch_0001/attributes.png"):
        _artifact(client, final, tmp, path)
    client.set_terminated(final)

    if family == "sd-lora":  # --tune-vae
        vae = _child(client, exp, parent, "vae", family, f"{family}: VAE tuned at 16px")
        client.log_param(vae, "image_size", 16)
        _artifact(client, vae, tmp, "vae/fig3.1_vae.png")
        client.set_terminated(vae)

    ref = _child(client, exp, parent, "reference", family, f"reference: untrained {family} (8)")
    client.log_metric(ref, "untrained.fd_estimator", 90.0)
    _artifact(client, ref, tmp, "reference/untrained.png")
    client.set_terminated(ref)


def make_sweep(client, tmp: Path, experiment: str, families: list[str]) -> None:
    exp = client.create_experiment(experiment)
    parent = client.create_run(exp, run_name="sweep/test", tags={"condface.phase": "sweep"}).info.run_id
    for key, value in {"model": ",".join(families), "final_epochs": "1", "sampler_phase": "False"}.items():
        client.log_param(parent, key, value)
    for name in ("epoch_samples", "final_samples", "attributes", "dataset", "augmentation"):
        _artifact(client, parent, tmp, f"real/{name}.png")
    for family in families:
        _family(client, exp, parent, family, tmp)
    real = _child(client, exp, parent, "reference", "real", "reference:real")
    client.log_metric(real, "ground_truth.fd_estimator", 0.0)
    client.log_metric(real, "real_held_out.fd_estimator", 5.0)
    _artifact(client, real, tmp, "reference/ground_truth.png")
    client.set_terminated(real)
    client.set_terminated(parent)


def sections(text: str, heading: str, figure: str) -> dict[str, str]:
    """Figure key -> the section (h2) it sits under."""
    out, current = {}, None
    for line in text.splitlines():
        if m := re.match(heading, line):
            current = m.group(1)
        for key in re.findall(figure, line):
            out[key] = current
    return out


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    from mlflow.tracking import MlflowClient

    tmp = tmp_path_factory.mktemp("layout")
    uri = f"sqlite:///{tmp / 'mlruns.db'}"
    client = MlflowClient(tracking_uri=uri)
    make_sweep(client, tmp, "two", ["ddpm", "sd-lora"])
    make_sweep(client, tmp, "one", ["ddpm"])
    return uri


@pytest.mark.parametrize("experiment,families", [("two", ["ddpm", "sd-lora"]), ("one", ["ddpm"])])
def test_every_figure_sits_under_its_section(store, tmp_path, experiment, families):
    from orchestration.report.build import write_report

    out, _ = write_report(store, experiment, None, tmp_path / "report")
    expected = {k: s for k, s in SECTION.items()
                if not any(k in keys for f, keys in FAMILY_FIGURES.items() if f not in families)}
    html = (out / "report.html").read_text()
    in_html = sections(html.replace("<h2>", "\n<h2>").replace("<h4", "\n<h4"), r"<h2>(.*?)</h2>",
                       r'<h4 id="figure-([^"]+)"')
    md = (out / "report.md").read_text()
    in_md = sections(md, r"^## (.*)$", r"^#### Figure (\S+):")
    import html as html_lib

    assert {k: html_lib.unescape(s) for k, s in in_html.items()} == expected
    assert in_md == expected
    assert all((out / name).is_file() and name in md for name in SHOWN)
    assert ("fig3.1_vae.png" in md) == ("sd-lora" in families)
    for family in families:  # each family's logged samples are shown (not only placed)
        assert f"fig3.4_{family}_untrained.png" in md and f"untrained {family}" in md
        for key in FAMILY_FIGURES[family] - {"3.1"}:
            number = "4.1" if key in ("4.1", "4.2") else "4.3"
            kind = "grid" if number == "4.1" else "final"
            assert f"fig{key}_{family}_{kind}_samples.png" in md, (key, family)
            assert (out / f"fig{key}_{family}_{kind}_samples.png").is_file()


def test_summary_prints_the_reports_tables():
    """The terminal summary's tables are the report's (orchestration.report.tables): the catalogue's labels, formats
    and better direction, no default direction for a metric the catalogue does not name."""
    from data.catalogue import metric
    from orchestration.report.tables import Trial, best_of
    from orchestration.summary import cfg_table, final_table, grid_table

    records = [{"label": "a", "history": [{"epoch": 1, "fid": 30.0, "est_acc": 0.5}, {"epoch": 2, "fid": 20.0,
                                                                                     "est_acc": 0.4}], "error": None},
               {"label": "b", "history": [{"epoch": 1, "fid": 25.0, "est_acc": 0.625}], "error": "boom"}]
    text = grid_table(records, {"mtcnn": "no weights"}, "ddpm grid")
    rows = {line.split("  ")[0]: line.split() for line in text.splitlines()}
    assert rows[metric("fid").label][-3:] == ["20.00", "a", "2"]  # lower is better: trial a, epoch 2
    assert rows[metric("est_acc").label][-3:] == ["62.50%", "b", "1"]  # higher is better: trial b
    assert "mtcnn unavailable: no weights" in text and "failed: b: boom" in text

    text = final_table({"ddpm (final)": [{"fid": 12.0}]}, {"mtcnn": "no weights"}, {"untrained DDPM": {"fid": 300.0}},
                       "final")
    assert "12.00" in text and "300.00" in text and "mtcnn unavailable: no weights" in text
    assert "spread" not in text and "seeds" not in text  # one seed: its values, no spread
    text = final_table({"ddpm (final)": [{"fid": 12.0, "est_acc": 0.5}, {"fid": 16.0, "est_acc": 0.6}]}, {}, {}, "f")
    rows = {line.split("  ")[0]: line for line in text.splitlines()}
    assert "ddpm (final) (mean of 2 seeds)" in text.splitlines()[1]
    assert rows[metric("fid").label].endswith("14.00 (spread 4.00)")  # the mean, max - min
    assert rows[metric("est_acc").label].endswith("55.00% (spread 10.00%)")
    text = cfg_table([{"guidance_scale": 3.0, "values": {"fd_estimator": 4.0, "est_acc": 0.6}}], "fd_estimator", [3.0])
    assert text.splitlines()[-1].split() == ["3", "4.000", "60.00%", "-", "*"]
    with pytest.raises(KeyError):
        best_of([Trial.from_history("a", [{"epoch": 1, "made_up": 1.0}])], "made_up")
