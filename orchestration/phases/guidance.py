"""The CFG sweep: the final model at several guidance scales, image quality vs condition accuracy as a Pareto PNG.

What the study plotted (Figure 4.8): FID (or its stand-in `fd_estimator` when Inception is missing; lower
is better) against the *plain* estimator accuracy (higher is better); the class-balanced accuracy is a
second panel. A scale is on the Pareto front (by plain accuracy) when no other scale is at least as good
on both axes and better on one. Logged as the nested run `cfg-sweep` of each family (one step per scale);
a joint sweep also plots every family's curve on the same axes on the parent run.
"""

from __future__ import annotations

from pathlib import Path

from data.catalogue import FAMILY_COLORS, FID_STAND_IN, TAG_PREFIX, finite
from orchestration.config import SweepConfig
from orchestration.evaluate import run_remote
from orchestration.phases.nested import nested_run
from orchestration.phases.recorded import recorded_rows
from orchestration.resources import plan_resources

ACCURACY = "est_acc"  # the study's Pareto axis
BALANCED = "est_acc_balanced"


def quality_metric(rows: list[dict]) -> str:
    return "fid" if rows and all("fid" in r["values"] for r in rows) else FID_STAND_IN


def pareto_front(points: list[tuple[float, float, float]]) -> list[float]:
    """points: (scale, quality: lower is better, accuracy: higher is better) -> scales not dominated."""
    front = []
    for s, q, a in points:
        dominated = any((q2 <= q and a2 >= a) and (q2 < q or a2 > a) for s2, q2, a2 in points if s2 != s)
        if not dominated:
            front.append(s)
    return front


def plot_pareto(curves: dict[str, list[dict]], title: str, path: Path) -> Path:
    """One curve per family (rows = Scored.record() dicts): quality vs plain accuracy (with each family's
    Pareto front) and quality vs class-balanced accuracy, side by side. Written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    quality = quality_metric([r for rows in curves.values() for r in rows])
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), dpi=120)
    for ax, acc in zip(axes, (ACCURACY, BALANCED)):
        for family, rows in curves.items():
            pts = [(r["guidance_scale"], r["values"].get(quality), r["values"].get(acc)) for r in rows]
            pts = sorted((p for p in pts if p[1] is not None and p[2] is not None), key=lambda p: p[0])
            color = FAMILY_COLORS.get(family)
            ax.plot([p[1] for p in pts], [p[2] for p in pts], "o-", c=color, alpha=0.8, label=family, zorder=3)
            for s, q, a in pts:
                ax.annotate(f"{s:g}", (q, a), textcoords="offset points", xytext=(5, 4), fontsize=8)
            front = pareto_front(pts)
            on_front = sorted((p for p in pts if p[0] in front), key=lambda p: p[1])
            if acc == ACCURACY and len(on_front) > 1:
                ax.plot([p[1] for p in on_front], [p[2] for p in on_front], "--", c=color, lw=3, alpha=0.35,
                        label=f"{family} Pareto front", zorder=2)
        ax.set_xlabel(f"{quality} (lower is better)")
        ax.set_ylabel(f"{acc} (higher is better)")
        ax.set_title("plain accuracy (the study's axis)" if acc == ACCURACY else "class-balanced accuracy",
                     fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize=8)
    fig.suptitle(title + "  (labels: guidance scale)", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def save_figure(fig, path: Path) -> Path:
    """A matplotlib figure as a PNG, written atomically (data.io), then closed."""
    import io

    import matplotlib.pyplot as plt

    from data.io import atomic_write_bytes

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())


def score_final_model(sweep, cfg: SweepConfig, final: dict, run_id: str, settings: list[tuple[str, int, float]],
                      n: int, seed: int, step_metric: str, extras: dict[str, str]) -> list[dict]:
    """The final model sampled and scored under each (sampler, steps, guidance scale) setting, on the same seeded
    conditions; setting i is step i of `run_id` (`step_metric`) with its values, sample counts and the row fields
    `extras` names (metric -> field). Settings the run already has (a continued phase) are read back from MLflow,
    the others sampled in one Ray task. Returns the settings' rows (Scored.record() dicts) as MLflow holds them."""
    tracker = sweep.tracker
    rows = recorded_rows(tracker, run_id, settings, step_metric, extras)
    missing = [i for i in range(len(settings)) if i not in rows]
    if rows:
        print(f"  {len(rows)} of {len(settings)} settings are in MLflow from the earlier run: read back, "
              f"{'sampling the other ' + str(len(missing)) if missing else 'nothing sampled again'}", flush=True)
    if not missing:
        return [rows[i] for i in range(len(settings))]
    scored = run_remote(plan_resources(cfg).lone, model=cfg.model, pipeline_dir=final["pipeline_dir"],
                        data_root=sweep.data_root, n=n, seed=seed, settings=[settings[i] for i in missing],
                        pool=sweep.pool, ddpm_variance=cfg.ddpm_variance, precision=cfg.sampling_precision)
    fresh = [r.record() for r in scored]
    tracker.log_unavailable(run_id, fresh[0]["unavailable"])  # before the steps: a logged step is a whole row
    for i, row in zip(missing, fresh):
        tracker.log_metrics(run_id, {**row["values"], **row["counts"], **{m: row[f] for m, f in extras.items()}},
                            step=i, step_metric=step_metric)
        rows[i] = {**row, "values": {k: v for k, v in row["values"].items() if finite(v)}}  # what MLflow holds
    return [rows[i] for i in range(len(settings))]


def run_cfg_sweep(continuing: bool, sweep, cfg: SweepConfig, final: dict, tags: dict[str, str]) -> dict:
    """The CFG phase as a unit: continued, it reads back the scales MLflow has (step = scale index) and samples
    the others; the figure, the Pareto front and cfg_sweep.json are then made again from all of them."""
    tracker = sweep.tracker
    out_dir = sweep.state.dir(f"{cfg.model}/cfg")
    params = {"cfg_scales": cfg.cfg_scales, "cfg_samples": cfg.cfg_samples, "sampler": cfg.sampler,
              "sampling_steps": cfg.sampling_steps, "ddpm_variance": cfg.ddpm_variance,
              "sampling_precision": cfg.sampling_precision, "seed": cfg.seed + 2,
              "pipeline": final["pipeline_dir"], "model_uri": final["model_uri"]}
    with nested_run(tracker, f"{sweep.parent}/{cfg.model}/cfg", f"{cfg.model}: CFG sweep", sweep.parent,
                    {**tags, f"{TAG_PREFIX}phase": "cfg"}, params) as run_id:
        print(f"\n== {cfg.model} CFG sweep: scales {', '.join(f'{s:g}' for s in cfg.cfg_scales)}, {cfg.cfg_samples} "
              "samples each ==", flush=True)
        rows = score_final_model(sweep, cfg, final, run_id, [(cfg.sampler, cfg.sampling_steps, s) for s in cfg.cfg_scales],
                                 cfg.cfg_samples, cfg.seed + 2, "scale_index", {"guidance_scale": "guidance_scale"})
        for row in rows:
            print(f"  scale {row['guidance_scale']:g}: " + "  ".join(
                f"{k} {v:.4g}" for k, v in sorted(row["values"].items()) if not k.startswith("est_acc_")
                or k == BALANCED), flush=True)
        quality = quality_metric(rows)
        points = [(r["guidance_scale"], r["values"][quality], r["values"][ACCURACY]) for r in rows
                  if quality in r["values"] and ACCURACY in r["values"]]
        front = pareto_front(points)
        png = plot_pareto({cfg.model: rows}, f"{cfg.model} ({cfg.preset}): guidance scale sweep, {cfg.cfg_samples} "
                                             "samples per scale", out_dir / "cfg_pareto.png")
        tracker.log_artifact(run_id, png, "cfg")
        tracker.log_json(run_id, [{**r, "pareto": r["guidance_scale"] in front} for r in rows], "cfg/cfg_sweep.json")
        tracker.set_tags(run_id, {f"{TAG_PREFIX}pareto_scales": ",".join(f"{s:g}" for s in front)})
    return {"run_id": run_id, "rows": rows, "quality_metric": quality, "front": front, "png": str(png)}


def joint_pareto(sweep, families: dict[str, dict]) -> str | None:
    """Every family's CFG curve on the same axes, logged to the parent run."""
    curves = {f: r["cfg"]["rows"] for f, r in families.items() if r.get("cfg")}
    if len(curves) < 2:
        return None
    png = plot_pareto(curves, f"guidance scale sweep: {len(curves)} families", sweep.state.root / "cfg_pareto_joint.png")
    sweep.tracker.log_artifact(sweep.parent, png, "cfg")
    sweep.tracker.log_json(sweep.parent, curves, "cfg/cfg_pareto_joint.json")  # the plotted points, per family
    return str(png)
