"""The report's protocol section: each training and sampling setting of this sweep beside what the study states,
and, where the study states nothing, said to be this project's choice (orchestration.config's study preset names
the same choices)."""

from __future__ import annotations

from typing import Any

from orchestration.report.document import Table, label
from orchestration.report.record import Record

CHOICE = "not stated: this project's choice"


def _train_params(rec: Record) -> dict[str, str]:
    """The engine's settings (train.* params) of a final run, else of a grid trial."""
    for phase in ("final", "grid"):
        for f in rec.families:
            runs = rec.runs(phase, f)
            if runs:
                return {k[len("train."):]: v for k, v in runs[0].data.params.items() if k.startswith("train.")}
    return {}


def protocol_rows(rec: Record) -> list[tuple[str, str, str]]:
    """(setting, this sweep, the study) for every setting the report's readers compare."""
    p, t = rec.params, _train_params(rec)
    schedule = p.get("lr_schedule", t.get("lr_scheduler", "constant"))
    warmup = p.get("lr_warmup_steps", t.get("lr_warmup_steps", "none"))
    warmup_text = "" if schedule == "constant" else \
        f", warm-up {'500 steps, at most a tenth of each run' if warmup in ('none', 'None') else warmup + ' steps'}"
    ga = p.get("grad_accum_axis", "1,4")
    return [
        ("optimizer", f"AdamW, betas {t.get('adam_betas', '?')}, weight decay {t.get('weight_decay', '?')}", CHOICE),
        ("learning rate", f"{p.get('lr', '?')}, {schedule}{warmup_text}",
         "'una tasa de aprendizaje inicial de 10^-4' (§3.5); the schedule is " + CHOICE + " (constant)"),
        ("batch", f"{p.get('batch_size', '?')} x gradient accumulation {{{ga}}}", "32, GA {No, 4} (§3.5)"),
        ("epochs", f"grid {p.get('epochs', '?')}, final {p.get('final_epochs', '?')}", "grid 5, final 15 (§3.5)"),
        ("condition dropped (CFG training)", p.get("p_uncond", "?"), "10 % (§3.5)"),
        ("EMA of the weights (sampling uses it)", f"decay {p.get('ema_decay', '?')}" if t.get("ema") != "False"
         else "off", CHOICE),
        ("gradient clipping", f"norm {p.get('grad_clip', '?')}", CHOICE),
        ("guidance scale of the per-epoch and final samples", p.get("guidance_scale", "?"), CHOICE),
        ("CFG scales swept (Figure 4.8)", f"{p.get('cfg_scales', '?')}, {p.get('cfg_samples', '?')} samples each",
         "250 samples per scale (§4.3); the scales are " + CHOICE + " (3-4 found best)"),
        ("sampler", f"{p.get('sampler', '?')}, {p.get('sampling_steps', '?')} steps (0 = the whole chain)",
         "DDPM over the whole chain (§2.1)"),
        ("DDPM sampler variance (also SD's)", p.get("ddpm_variance", "?"),
         CHOICE + " (fixed_large reads §2.1's sigma_t^2 = beta_t; SD's sampler is not named)"),
        ("selection of the final configuration", p.get("select_metric", "?"),
         "estimator accuracy (§4.1, §4.2; it ranked every metric)"),
        ("seeds of the final run", _seeds(p),
         "one final model per family, its seed not stated; a second seed (for the seed-to-seed spread the "
         "conclusions are checked against) is " + CHOICE + ": 2 in the study preset, 1 in the CPU presets"),
        *_vae_rows(rec),
    ]


def _seeds(p: dict[str, str]) -> str:
    """This sweep's final seeds (`final_seeds`; a sweep recorded before the setting trained one)."""
    n, seed = int(p.get("final_seeds", "1")), int(p.get("seed", "0"))
    if n == 1:
        return f"1 (seed {seed}): the seed-to-seed spread is not measured"
    return (f"{n} (seeds {', '.join(str(seed + i) for i in range(n))}): each its own final run on the same final "
            f"sample set; seed {seed}'s model registered (the CFG and sampler phases use it)")


def _vae_rows(rec: Record) -> list[tuple[str, str, str]]:
    """The VAE tuning's settings (`--tune-vae`), where this sweep tuned one: the study proposes it (§5), never did."""
    rows = []
    for f in rec.families:
        for run in rec.runs("vae", f):
            v = {k[len("vae."):]: val for k, val in run.data.params.items() if k.startswith("vae.")}
            rows.append((f"VAE tuned at the data's resolution ({f})",
                         f"preset {v.get('preset', '?')}: {v.get('steps', '?')} steps x batch {v.get('batch_size', '?')}"
                         f", lr {v.get('lr', '?')}, {v.get('loss', '?')} + KL {v.get('kl_weight', '?')} (+ LPIPS "
                         f"{v.get('perceptual_weight', '?')} where its weights are present)"
                         f"{', decoder only' if v.get('decoder_only') == 'True' else ''}",
                         "not done: SD Nano's VAE, trained at 128 px, proposed to be tuned at 64 px (§4.2, §5); the "
                         "budget and loss are " + CHOICE))
    return rows


def protocol_section(rec: Record) -> list[tuple[str, Any]]:
    t = Table("P-1", "the protocol: this sweep's settings beside the study's", ["setting", "this sweep", "the study"])
    t.rows = [[label(a), label(b), label(c)] for a, b, c in protocol_rows(rec)]
    t.notes.append("'this project's choice': the study does not state the setting; orchestration.config's study "
                   "preset names the same choices")
    return [("table", t)]


__all__ = ["protocol_section", "protocol_rows", "CHOICE"]
