"""The CFG sweep: the final model at several guidance scales, image quality vs condition accuracy as a Pareto PNG.

Quality is FID (or its stand-in `fd_estimator` when Inception is missing; lower is better);
condition accuracy is the estimator's class-balanced accuracy (higher is better; the plain accuracy
is in the table too). A scale is on the Pareto front when no other scale is at least as good on
both axes and better on one. Logged as the nested run `cfg-sweep` (one step per scale).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from orchestration.config import FID_STAND_IN, SweepConfig
from orchestration.evaluate import Scored, run_remote
from orchestration.tracking import TAG_PREFIX, Tracker

ACCURACY = "est_acc_balanced"


@dataclass
class CfgOutcome:
    run_id: str
    rows: list[Scored]
    quality_metric: str
    front: list[float]  # guidance scales on the Pareto front
    png: Path


def quality_metric(rows: list[Scored]) -> str:
    return "fid" if all("fid" in r.values for r in rows) else FID_STAND_IN


def pareto_front(points: list[tuple[float, float, float]]) -> list[float]:
    """points: (scale, quality: lower is better, accuracy: higher is better) -> scales not dominated."""
    front = []
    for s, q, a in points:
        dominated = any((q2 <= q and a2 >= a) and (q2 < q or a2 > a) for s2, q2, a2 in points if s2 != s)
        if not dominated:
            front.append(s)
    return front


def plot_pareto(rows: list[Scored], quality: str, front: list[float], title: str, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = [(r.guidance_scale, r.values.get(quality), r.values.get(ACCURACY)) for r in rows]
    pts = [p for p in pts if p[1] is not None and p[2] is not None]
    fig, ax = plt.subplots(figsize=(6, 4.5), dpi=120)
    ax.scatter([p[1] for p in pts], [p[2] for p in pts], c="tab:blue", zorder=3)
    for s, q, a in pts:
        ax.annotate(f"s={s:g}", (q, a), textcoords="offset points", xytext=(6, 4), fontsize=9)
    on_front = sorted((p for p in pts if p[0] in front), key=lambda p: p[1])
    ax.plot([p[1] for p in on_front], [p[2] for p in on_front], "-", c="tab:orange", label="Pareto front", zorder=2)
    ax.set_xlabel(f"{quality} (lower is better)")
    ax.set_ylabel(f"{ACCURACY} (higher is better)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(loc="best")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def run_cfg_sweep(cfg: SweepConfig, out_dir: Path, pipeline_dir: str, data_root: str, pool, tracker: Tracker,
                  parent_run_id: str, tags: dict[str, str], resources: dict[str, float]) -> CfgOutcome:
    run_id = tracker.open_run(f"{parent_run_id}/cfg", "cfg-sweep", parent_run_id,
                              tags={**tags, f"{TAG_PREFIX}phase": "cfg"},
                              params={"cfg_scales": cfg.cfg_scales, "cfg_samples": cfg.cfg_samples,
                                      "sampler": cfg.sampler, "sampling_steps": cfg.sampling_steps,
                                      "seed": cfg.seed + 2, "pipeline": pipeline_dir})
    try:
        print(f"\n== CFG sweep: scales {', '.join(f'{s:g}' for s in cfg.cfg_scales)}, {cfg.cfg_samples} samples "
              "each ==", flush=True)
        rows = run_remote(resources, model=cfg.model, pipeline_dir=pipeline_dir, data_root=data_root,
                          n=cfg.cfg_samples, seed=cfg.seed + 2, scales=list(cfg.cfg_scales), sampler=cfg.sampler,
                          steps=cfg.sampling_steps, pool=pool)
        for i, row in enumerate(rows):
            tracker.log_metrics(run_id, {**row.values, **row.counts,
                                         "guidance_scale": row.guidance_scale}, step=i, step_metric="scale_index")
            print(f"  scale {row.guidance_scale:g}: " + "  ".join(f"{k} {v:.4g}" for k, v in sorted(row.values.items())
                                                               if not k.startswith("est_acc_") or k == ACCURACY),
                  flush=True)
        tracker.log_unavailable(run_id, rows[0].unavailable if rows else {})
        quality = quality_metric(rows)
        points = [(r.guidance_scale, r.values[quality], r.values[ACCURACY]) for r in rows
                  if quality in r.values and ACCURACY in r.values]
        front = pareto_front(points)
        png = plot_pareto(rows, quality, front, f"{cfg.model} ({cfg.preset}): guidance scale sweep, "
                                                f"{cfg.cfg_samples} samples per scale", out_dir / "cfg_pareto.png")
        tracker.log_artifact(run_id, png, "cfg")
        tracker.log_json(run_id, [{"guidance_scale": r.guidance_scale, **r.values, "counts": r.counts,
                                   "pareto": r.guidance_scale in front} for r in rows], "cfg/cfg_sweep.json")
        tracker.set_tags(run_id, {f"{TAG_PREFIX}pareto_scales": ",".join(f"{s:g}" for s in front)})
        tracker.finish(run_id, ok=True)
        return CfgOutcome(run_id, rows, quality, front, png)
    except BaseException as err:
        tracker.finish(run_id, ok=False, reason=f"{type(err).__name__}: {err}")
        raise
