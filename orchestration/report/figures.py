"""The report's figures: the logged sample grids beside real images, and the plots drawn from the record.

Each figure has its own function, named for what it shows, so the assembly (`orchestration.report.build`) places
every figure under its section by name, whatever the number of families.
"""

from __future__ import annotations

import io
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from data.catalogue import (
    FAMILIES,
    FAMILY_COLORS,
    FAMILY_NAMES,
    FID_STAND_IN,
    STEP_LOSS_METRIC,
    TAG_PREFIX,
    finite,
    metric,
)
from orchestration.report import study_numbers as study
from orchestration.report.document import Figure, Panel, Report, Table, label
from orchestration.report.record import Record, run_label

EPOCH_METRICS = ("train_loss", "val_loss", "fid", "fd_estimator", "mtcnn", "clip_score", "est_acc", "est_acc_balanced")
NO_REAL = "the sweep logged no real-image grids (real/ on the parent run: sweeps before the report existed)"
REAL_PANEL = "real images of the same conditions"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png_of(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    _pyplot().close(fig)
    return buf.getvalue()


def _png_of_file(draw, name: str) -> bytes:
    """The PNG a phase's plotting function (which writes a file) draws, read back."""
    with tempfile.TemporaryDirectory() as tmp:
        return draw(Path(tmp) / name).read_bytes()


def _last_epoch_png(rec: Record, run, name: str) -> tuple[bytes | None, str]:
    dirs = rec.artifact_dirs(run, "samples")
    if not dirs:
        return None, f"{run_label(run)} logged no samples yet"
    return rec.artifact(run, f"{dirs[-1]}/{name}"), dirs[-1].rsplit("_", 1)[-1].lstrip("0") or "0"


def _families(rec: Record) -> list[str]:
    return [f for f in rec.families if f in FAMILIES]


# --- sample grids (Figures 4.1-4.5) ---------------------------------------------------------------
def grid_number(family: str) -> str:
    """The study's number of a family's grid-samples figure (4.1 DDPM, 4.2 SD + LoRA; G-<family> for the others)."""
    return {"ddpm": "4.1", "sd-lora": "4.2"}.get(family, f"G-{family}")


def study_choice(rec: Record, family: str) -> tuple[Any, str, float, int] | None:
    """(grid run, metric, value, epoch) of the configuration the study's Figures 4.1 / 4.2 show: the best FID at
    any epoch (§4.1, §4.2: "la configuración que ha conseguido mejores resultados en términos de FID"), or the
    best of its stand-in where FID is unavailable; None before any trial logged either."""
    runs = rec.runs("grid", family)
    key = "fid" if any(rec.series(r, "fid") for r in runs if "fid" in r.data.metrics) else FID_STAND_IN
    best = None
    for run in runs:
        for epoch, value in sorted(rec.series(run, key).items()):
            if finite(value) and (best is None or metric(key).better_than(value, best[2])):
                best = (run, key, value, epoch)
    return best


def grid_samples(rec: Record, report: Report) -> list[Figure]:
    """Figures 4.1 (ddpm) / 4.2 (sd-lora): the last epoch's samples of the study's choice (the best-FID
    configuration, or its stand-in's), and of the configuration the sweep selected when that is another."""
    real = rec.artifact(rec.parent, "real/epoch_samples.png")
    figs = []
    for f in _families(rec):
        number = grid_number(f)
        chosen = rec.tags.get(f"{TAG_PREFIX}best_config.{f}")
        metric_name = rec.tags.get(f"{TAG_PREFIX}select_metric", rec.params.get("select_metric", "?"))
        best = study_choice(rec, f)
        panels, notes = [], []
        if best is not None:
            run, key, value, at = best
            png, epoch = _last_epoch_png(rec, run, "samples.png")
            panels.append(Panel(f"{f}: {run_label(run)} (the study's choice: best {key}), epoch {epoch}", png,
                                f"fig{number}_{f}_grid_samples.png", "not logged" if png is None else ""))
            notes.append(f"Shown first, as in the study (§4.1, §4.2): the grid trial with the best "
                         f"{'FID' if key == 'fid' else f'{key} (FID unavailable: its stand-in)'}, "
                         f"{metric(key).text(value)} at epoch {at}: {run_label(run)}, at its last epoch.")
        else:
            panels.append(Panel(f"{f}: the study's choice (best FID)", None, "", "no grid trial logged FID or "
                                                                                  f"{FID_STAND_IN} yet"))
        grid = [r for r in rec.runs("grid", f) if run_label(r) == chosen] if chosen else []
        same = bool(grid) and best is not None and grid[0].info.run_id == best[0].info.run_id
        if grid and not same:
            png, epoch = _last_epoch_png(rec, grid[0], "samples.png")
            panels.append(Panel(f"{f}: {chosen} (selected by {metric_name}), epoch {epoch}", png,
                                f"fig{number}_{f}_selected_samples.png", "not logged" if png is None else ""))
        notes.append(f"The configuration this sweep selected for the final run (by {metric_name}): "
                     f"{chosen or 'none yet'}{' (the same)' if same else ''}.")
        panels.append(Panel(REAL_PANEL, real, "real_epoch_samples.png", NO_REAL))
        figs.append(Figure(number, f"{FAMILY_NAMES.get(f, f)}: grid samples of the study's choice, the best-FID "
                                   f"configuration ({rec.params.get('eval_samples', '?')} per-epoch conditions)",
                           panels, " ".join(notes) + " Each tile is asked for the condition of the real image in "
                                                     "the same place."))
    return figs


def final_samples(rec: Record) -> list[Figure]:
    """Figures 4.3 (ddpm) / 4.4 (sd-lora): each final model's samples on the final conditions."""
    real = rec.artifact(rec.parent, "real/final_samples.png")
    figs = []
    for f in _families(rec):
        number = {"ddpm": "4.3", "sd-lora": "4.4"}.get(f, f"F-{f}")
        run = rec.one("final", f)
        png = rec.artifact(run, "final_samples/final_samples.png") if run else None
        n = run.data.metrics.get("final_est_acc_n") if run else None
        shown = "" if not finite(n) else f" ({int(n)} samples" + (", the first 64 shown)" if n > 64 else ")")
        panels = [Panel(f"{f} final model{shown}", png, f"fig{number}_{f}_final_samples.png",
                        "no final evaluation logged yet"),
                  Panel(REAL_PANEL, real, "real_final_samples.png", NO_REAL)]
        figs.append(Figure(number, f"{FAMILY_NAMES[f]}: the final model's samples", panels))
    return figs


def attributes_figure(rec: Record, report: Report) -> Figure:
    """Figure 4.5: each final model's attribute grid beside real images of the same levels."""
    real = rec.artifact(rec.parent, "real/attributes.png")
    if real is None:
        report.missing.append(f"real images beside the samples: {NO_REAL}")
    real_tiles = ""
    info = rec.artifact(rec.parent, "real/attributes.json")
    if info:
        tiles = json.loads(info)
        real_tiles = (f" Real attribute grid: {tiles.get('exact', '?')} of {len(tiles.get('tiles', []))} tiles have "
                      "exactly the asked levels; the others are the nearest validation image with the row's level "
                      "(blank: none has it).")
    panels = []
    for f in rec.families:
        run = rec.one("final", f)
        png, epoch = _last_epoch_png(rec, run, "attributes.png") if run else (None, "no final run yet")
        panels.append(Panel(f"{f} final model (epoch {epoch})" if png else f"{f} final model", png,
                            f"fig4.5_{f}_attributes.png", epoch if png is None else ""))
    panels.append(Panel("real images", real, "real_attributes.png", NO_REAL))
    return Figure("4.5", "attribute grids: row = attribute, levels 0..5 left to right (the others at 0)", panels,
                  "The study's Figure 4.5 shows one attribute at maximum intensity: the right-most column." + real_tiles)


def confusion_figure(rec: Record) -> Figure:
    """Where the class-balanced accuracy is lost: per family, the estimator's reading of the final samples (rows:
    the level asked for), beside its reading of real validation images (the judge's own errors, from its report)."""
    from evaluation.confusion import plot_confusions

    panels = []
    for f in rec.families:
        run = rec.one("final", f)
        png = rec.artifact(run, "final_samples/final_confusion.png") if run else None
        missing = "the estimator is unavailable" if "est_acc" in rec.unavailable(run) else \
            "no final evaluation logged yet"
        panels.append(Panel(f"{f} final model", png, f"figC_{f}_final_confusion.png", "" if png else missing))
    real, missing = None, "no estimator report on the parent run"
    report = rec.artifact(rec.parent, "estimator/report.json")
    if report is not None:
        confusion = json.loads(report).get("val_confusion")
        if confusion:
            real = _png_of_file(lambda path: plot_confusions(confusion, "the estimator on real validation images",
                                                             path, ylabel="true level"), "real.png")
        else:
            missing = "the estimator's report has no confusion matrices"
    panels.append(Panel("the estimator on real validation images", real, "real_confusion.png", missing))
    return Figure("C", "where the attribute accuracy is lost: the level asked for against the level the estimator "
                       "read", panels,
                  "Each row is normalised to the samples asked for that level; the diagonal is that level's recall, "
                  "and the class-balanced accuracy is the mean of the diagonals. Level 0 is the most frequent level "
                  "of every attribute, so the rarer levels decide the balanced figure.")


# --- plots of the final runs (Figures 4.6, 4.7) ---------------------------------------------------
def loss_figure(rec: Record, report: Report) -> Figure:
    """Figure 4.6: the training loss per optimizer step of each final run."""
    curves = {}
    for f in rec.families:
        run = rec.one("final", f)
        points = rec.history(run, STEP_LOSS_METRIC) if run else []
        if points:
            curves[f] = points
        elif run is not None:
            report.missing.append(f"{f}: the final run logged no {STEP_LOSS_METRIC} (runs before per-step loss logging)")
    if not curves:
        return Figure("4.6", "training loss per optimizer step",
                      [Panel("loss per step", None, "", f"no final run logged {STEP_LOSS_METRIC}")])
    fig, axes = _pyplot().subplots(1, len(curves), figsize=(5.5 * len(curves), 3.6), dpi=110, squeeze=False)
    for ax, (f, points) in zip(axes[0], curves.items()):
        ax.plot([m.step for m in points], [m.value for m in points], "-", c=FAMILY_COLORS.get(f), lw=1,
                marker="o" if len(points) < 30 else None, ms=3)
        ax.set_title(f"{f} final run ({len(points)} windows)", fontsize=10)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("training loss (window mean)")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return Figure("4.6", f"training loss per optimizer step of {_each_final(curves)}",
                  [Panel("training loss per step", _png_of(fig), "fig4.6_loss_per_step.png")],
                  "Each point is the mean loss of a window of optimizer steps (TrainConfig.loss_every, 10; the last "
                  "window of an epoch may be shorter), logged as train_loss_step with step = optimizer step. The study "
                  "found the SD+LoRA curve noisier (its loss moves less, so the noise shows on its y axis).")


def _each_final(families) -> str:
    """The study's "both final runs" (it had two families), for however many this record has."""
    return {1: "the final run", 2: "both final runs"}.get(len(families), "each family's final run")


def epochs_figure(rec: Record) -> Figure:
    """Figure 4.7: every metric per epoch of each final run, with the study's last-epoch accuracy dotted."""
    finals = {f: r for f in rec.families if (r := rec.one("final", f)) is not None}
    keys = [k for k in EPOCH_METRICS if any(rec.history(r, k) for r in finals.values())]
    if not keys:
        return Figure("4.7", "every metric per epoch",
                      [Panel("metrics per epoch", None, "", "no final run logged an epoch yet")])
    cols = min(4, len(keys))
    rows = -(-len(keys) // cols)
    fig, axes = _pyplot().subplots(rows, cols, figsize=(3.6 * cols, 2.9 * rows), dpi=110, squeeze=False)
    for ax, key in zip(axes.flat, keys):
        scale = 100 if key.startswith("est_acc") else 1
        for f, run in finals.items():
            pts = rec.history(run, key)
            ax.plot([m.step for m in pts], [m.value * scale for m in pts], "o-", c=FAMILY_COLORS.get(f), label=f, ms=4)
        if key == "est_acc":
            for f, (_, last) in study.FIGURE_4_7_EST_ACC.items():
                if f in finals:
                    ax.axhline(100 * last, ls=":", c=FAMILY_COLORS.get(f), alpha=0.6, label=f"study {f}, epoch 15")
        ax.set_title(key + (" (%)" if key.startswith("est_acc") or key == "mtcnn" else ""), fontsize=9)
        ax.set_xlabel("epoch", fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    fig.tight_layout()
    first_last = "; ".join(f"{f} {100 * a:.1f} % -> {100 * b:.1f} %" for f, (a, b) in study.FIGURE_4_7_EST_ACC.items())
    return Figure("4.7", f"every metric per epoch of {_each_final(finals)}",
                  [Panel("metrics per epoch", _png_of(fig), "fig4.7_metrics_per_epoch.png")],
                  f"Per-epoch sampling uses the {rec.params.get('eval_samples', '?')} per-epoch conditions. The study's "
                  f"estimator accuracy over its 15 epochs (§4.3): {first_last} (dotted: its last epoch)."
                  + (f" Note: {study.DDPM_FINAL_ACC_NOTE}." if "ddpm" in finals else ""))


# --- the phases after the final run (Figure 4.8, samplers) ----------------------------------------
def pareto_figure(curves: dict[str, list[dict[str, Any]]]) -> Figure:
    """Figure 4.8: every family's CFG curve on the same axes (the guidance phase's own plot)."""
    from orchestration.phases.guidance import plot_pareto, quality_metric

    title = "guidance scale sweep" + (f": {len(curves)} families" if len(curves) > 1 else "")
    png = _png_of_file(lambda path: plot_pareto(curves, title, path), "pareto.png")
    quality = quality_metric([r for rows in curves.values() for r in rows])
    return Figure("4.8", "the CFG Pareto curves: image quality against estimator accuracy",
                  [Panel("CFG Pareto curves", png, "fig4.8_cfg_pareto.png")],
                  f"Labels: guidance scale. The study swept {study.CFG['samples']} samples per scale and found scales "
                  f"{study.CFG['best_scales']} the best trade-off (§4.3); it plotted FID, here the quality axis is "
                  f"{quality}.")


def sampler_figure(family: str, rows: list[dict[str, Any]], quality: str) -> Figure:
    """The sampler phase's plot of one family: quality and accuracy against network evaluations."""
    from orchestration.phases.samplers import plot_samplers

    png = _png_of_file(lambda path: plot_samplers(rows, quality, f"{family}: samplers", path), "samplers.png")
    return Figure(f"S-{family}", f"{family}: quality and accuracy against network evaluations",
                  [Panel(f"{family} samplers", png, f"figS_{family}_samplers.png")])


# --- parameter counts (Figure 4.9) ----------------------------------------------------------------
def params_text(n: float) -> str:
    if n >= 1e6:
        return f"{n / 1e6:.2f}M"
    return f"{n / 1e3:.1f}K" if n >= 1e3 else f"{n:.0f}"


@dataclass
class Bar:
    name: str
    value: float
    color: str | None


def params_section(rec: Record, report: Report) -> list[tuple[str, Any]]:
    """Table and Figure 4.9: the parameter counts the runs recorded (built.* params), beside the study's."""
    t = Table("4.9", "parameter counts of the trained models (from the runs' built.* params)",
              ["model", "total", "U-Net", "trained", "study"])
    bars: list[Bar] = []
    for f in rec.families:
        run = rec.one("final", f) or (rec.runs("grid", f) or [None])[0]
        p = run.data.params if run else {}
        total, trained, unet = (p.get(f"built.{k}") for k in ("params_total", "params_trainable", "params_unet"))
        theirs = study.PARAMETERS.get(f, {})
        if total is None:
            report.missing.append(f"{f}: no run recorded its parameter counts (Figure 4.9)")
            continue
        t.rows.append([label(f"{f} ({run_label(run)})")]
                      + [label(f"{int(v):,} ({params_text(int(v))})") if v else label("-")
                         for v in (total, unet or total, trained)]
                      + [label(", ".join(f"{k} {params_text(v)}" for k, v in theirs.items()))])
        color = FAMILY_COLORS.get(f)
        # a family with frozen parts (a VAE, a text encoder) counts its whole pipeline, then its U-Net
        bars.append(Bar(f"{f}: whole pipeline" if unet and unet != total else f"{f}: total", int(total), color))
        if unet and unet != total:
            bars.append(Bar(f"{f}: U-Net", int(unet), color))
        bars.append(Bar(f"{f}: trained", int(trained), color))
        bars += [Bar(f"study {f}: {k}", v, "lightgray") for k, v in theirs.items()]
    if not bars:
        return []
    t.notes.append("study values: §4.3 (Figura 4.9) and §3.1.2: DDPM 112.10M trained (said of its final "
                   "[256,512,768,768] model; diffusers gives that set 284.9M and [128,256,512,512] 112.2M), SD Nano's "
                   "U-Net 865.91M, LoRA r = 4 830K")
    return [("table", t), ("figure", Figure("4.9", "parameter counts: total and trained, every family (gray: the "
                                                    "study's)", [Panel("parameter counts", _params_png(bars),
                                                                       "fig4.9_parameters.png")]))]


def _params_png(bars: list[Bar]) -> bytes:
    fig, ax = _pyplot().subplots(figsize=(7.5, 0.45 * len(bars) + 1.2), dpi=110)
    ax.barh([b.name for b in bars], [b.value for b in bars], color=[b.color for b in bars])
    for i, b in enumerate(bars):
        ax.text(b.value, i, " " + params_text(b.value), va="center", fontsize=8)
    ax.set_xscale("log")
    ax.invert_yaxis()
    ax.set_xlabel("parameters (log scale)")
    ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    return _png_of(fig)


__all__ = ["grid_samples", "final_samples", "attributes_figure", "confusion_figure", "loss_figure", "epochs_figure",
           "pareto_figure", "sampler_figure", "params_section", "params_text"]
