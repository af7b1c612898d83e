"""The sampler phase (--sampler-phase, the study's §5 future work: "evaluar el efecto de usar otros
planificadores de ruido"): the final model sampled with DDPM, DDIM and DPM-Solver++ at several step
counts (0 = the model's whole chain), each on the same seeded conditions at the final guidance scale.

It gives image quality and estimator accuracy against network evaluations per image (NFE = steps: the
two classifier-free-guidance halves share one batched forward), as a table in the terminal, the nested
run `<family>: samplers` in MLflow (one step per setting, with sampler/steps/NFE/seconds) and a plot.
"""

from __future__ import annotations

from pathlib import Path

from data.catalogue import SAMPLER_STYLES, TAG_PREFIX
from orchestration.config import FULL_CHAIN, SweepConfig
from orchestration.phases.guidance import ACCURACY, BALANCED, quality_metric, save_figure, score_final_model
from orchestration.phases.nested import nested_run
from orchestration.summary import sampler_table


def plot_samplers(rows: list[dict], quality: str, title: str, path: Path) -> Path:
    """Quality and accuracy against NFE (log scale), one line per sampler."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 4), dpi=110)
    for ax, key in zip(axes, (quality, ACCURACY, BALANCED)):
        for sampler in dict.fromkeys(r["sampler"] for r in rows):
            pts = sorted((r["steps"], r["values"][key]) for r in rows if r["sampler"] == sampler and key in r["values"])
            color, marker = SAMPLER_STYLES.get(sampler, (None, "o"))
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=marker, c=color, label=sampler)
        ax.set_xscale("log")
        ax.set_xlabel("network evaluations per image (NFE)")
        ax.set_ylabel(key + (" (lower is better)" if key == quality else " (higher is better)"))
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def run_sampler_phase(continuing: bool, sweep, cfg: SweepConfig, final: dict, tags: dict[str, str]) -> dict:
    """The sampler phase as a unit: continued, it reads back the settings MLflow has (step = setting index) and
    samples the others."""
    tracker = sweep.tracker
    scale = final["guidance_scale"]
    settings = [(s, n, scale) for s in cfg.sampler_phase_samplers for n in cfg.sampler_phase_steps]
    described = ", ".join(f"{s} x {'T' if n == FULL_CHAIN else n}" for s, n, _ in settings)
    params = {"samplers": cfg.sampler_phase_samplers, "steps": cfg.sampler_phase_steps,
              "samples": cfg.sampler_samples, "guidance_scale": scale, "ddpm_variance": cfg.ddpm_variance,
              "sampling_precision": cfg.sampling_precision, "seed": cfg.seed + 3, "model_uri": final["model_uri"]}
    with nested_run(tracker, f"{sweep.parent}/{cfg.model}/samplers", f"{cfg.model}: samplers", sweep.parent,
                    {**tags, f"{TAG_PREFIX}phase": "samplers"}, params) as run_id:
        print(f"\n== {cfg.model} sampler phase: {described}; {cfg.sampler_samples} samples each ==", flush=True)
        rows = score_final_model(sweep, cfg, final, run_id, settings, cfg.sampler_samples, cfg.seed + 3,
                                 "setting_index", {"nfe": "steps", "seconds": "seconds"})
        quality = quality_metric(rows)
        png = plot_samplers(rows, quality, f"{cfg.model}: the final model under each sampler ({cfg.sampler_samples} "
                                           f"samples, guidance {scale:g})",
                            sweep.state.dir(f"{cfg.model}/samplers") / "samplers.png")
        tracker.log_artifact(run_id, png, "samplers")
        tracker.log_json(run_id, rows, "samplers/samplers.json")
    print(sampler_table(rows, quality), flush=True)
    return {"run_id": run_id, "rows": rows, "quality_metric": quality, "png": str(png)}
