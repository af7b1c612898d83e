"""The report's "the study's conclusions, checked": each comparison the study concludes or leaves open (§4.3, §5),
against what this sweep measured.

For every claim whose two families are in the record: each family's final value of the study's conditioning
metric (estimator accuracy), its class-balanced form and the image-quality metric (FID, or its stand-in), with
sample counts; the difference; and whether it exceeds the seed-to-seed spread. The spread is measured only where
a family has final runs with two or more seeds (`train.seed`): otherwise the section says it was not, and gives the
accuracies' sampling standard error instead (what a second draw of the same number of samples would move). A
claim whose family is not in the record says so. Generic over the families present: no family is named here but
in CLAIMS.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from data.catalogue import FAMILY_NAMES, FID_STAND_IN, TAG_PREFIX, better, finite
from orchestration.report.document import Cell, Table, label, metric_text
from orchestration.report.record import Record

ACCURACY_KEYS = ("est_acc", "est_acc_balanced")


@dataclass(frozen=True)
class Claim:
    first: str  # the family the study expects to be better
    second: str
    claim: str  # the study's words, in English
    source: str


CLAIMS = (
    Claim("ddpm", "pixel-text", "the attribute DDPM is better than a text-conditioned DDPM trained from scratch "
          "(no number: the study tried such U-Nets briefly and gave up, §3.1.2)", "§5"),
    Claim("ddpm", "sd-lora", "the attribute DDPM conditions better (estimator 86.40 % vs 80.40 %) at similar image "
          "quality (FID 104.5 vs 93.2) than SD Nano + LoRA", "§4.3, §5"),
    Claim("if-lora", "sd-lora", "DeepFloyd IF stage I + LoRA, in pixel space at 64 px, should do better than "
          "SD + LoRA", "§5 (future work)"),
)


VAE_CLAIM = ("SD's VAE (trained at 128 px) limits the detail at 64 px: tuning it on the faces at 64 px should help",
             "§4.2, §5 (future work)")
VAE_KEYS = ("psnr", FID_STAND_IN, *ACCURACY_KEYS)


@dataclass
class Measured:
    """One family's final value of a metric: the mean over its seeds, each seed's value, and the sample count."""

    values: dict[int, float]  # seed -> value
    n: float | None

    @property
    def mean(self) -> float:
        return sum(self.values.values()) / len(self.values)

    @property
    def spread(self) -> float | None:
        return max(self.values.values()) - min(self.values.values()) if len(self.values) > 1 else None


def finals_by_seed(rec: Record, family: str) -> dict[int, Any]:
    """The family's final runs that were evaluated, one per seed (the latest of a seed)."""
    out: dict[int, Any] = {}
    for run in sorted(rec.runs("final", family), key=lambda r: r.info.start_time or 0):
        if "final_evaluated" in run.data.metrics:
            seed = run.data.params.get("train.seed", "0")
            out[int(seed) if seed.lstrip("-").isdigit() else 0] = run
    return out


def measured(runs: dict[int, Any], key: str) -> Measured | None:
    values = {s: r.data.metrics[f"final_{key}"] for s, r in runs.items() if finite(r.data.metrics.get(f"final_{key}"))}
    if not values:
        return None
    counts = [r.data.metrics.get(f"final_{'est_acc' if key.startswith('est_acc') else key}_n") for r in runs.values()]
    return Measured(values, next((c for c in counts if finite(c)), None))


def quality_key(a: dict[int, Any], b: dict[int, Any]) -> str:
    """FID where both families have it, else its stand-in."""
    both = list(a.values()) + list(b.values())
    return "fid" if all(finite(r.data.metrics.get("final_fid")) for r in both) else FID_STAND_IN


def sampling_se(a: Measured, b: Measured) -> float | None:
    """The standard error of the difference of two accuracies from their sample counts (binomial)."""
    if not (finite(a.n) and finite(b.n) and a.n > 0 and b.n > 0):
        return None
    return math.sqrt(a.mean * (1 - a.mean) / a.n + b.mean * (1 - b.mean) / b.n)


NO_SEEDS = "seed-to-seed spread not measured (fewer than two seeds of each final model; --final-seeds 2 measures it)"
ONE_VAE = ("no seed-to-seed spread: the VAE is tuned once, and the same held-out images go through both VAEs (the "
           "difference is the tuning's alone)")


def verdict(key: str, a: Measured, b: Measured, without_spread: str = NO_SEEDS) -> str:
    """Which family the difference favours, and whether it exceeds the seed spread (or, without one, says why with
    `without_spread` and gives the accuracies' sampling standard error)."""
    diff = a.mean - b.mean
    favours = "neither (equal)" if diff == 0 else \
        ("the first" if (diff > 0) == (better(key) == "max") else "the second")
    spreads = [s for s in (a.spread, b.spread) if s is not None]
    if len(spreads) == 2:
        noise = max(spreads)
        return (f"favours {favours}; |difference| {'exceeds' if abs(diff) > noise else 'does not exceed'} the "
                f"seed-to-seed spread ({metric_text(key, noise)})")
    text = f"favours {favours}; {without_spread}"
    se = sampling_se(a, b) if key in ACCURACY_KEYS else None
    if se:
        text += f"; |difference| = {abs(diff) / se:.1f} x the sampling standard error ({metric_text(key, se)})"
    return text


def _cell(key: str, m: Measured | None) -> Cell:
    if m is None:
        return Cell("not logged", kind="missing")
    seeds = ", ".join(f"seed {s}: {metric_text(key, v)}" for s, v in sorted(m.values.items()))
    text = metric_text(key, m.mean) + (f" (mean of {len(m.values)} seeds: {seeds})" if len(m.values) > 1 else "")
    return Cell(text, int(m.n) if finite(m.n) else None)


def stand_in_note(rec: Record) -> str | None:
    """What in this record is a stand-in for the study's models and data (None: the study's protocol)."""
    parts = []
    if rec.params.get("preset") not in (None, "study"):
        parts.append(f"preset {rec.params.get('preset')} (tiny networks, short runs)")
    if rec.params.get("data") == "toy":
        parts.append("the embedded synthetic faces")
    bases = {r.data.tags.get(f"{TAG_PREFIX}base", "") for r in rec.children}
    if any("tiny" in b for b in bases):
        parts.append("tiny offline bases built on this machine in place of the pretrained models")
    if not parts:
        return None
    return ("This run's comparisons are about this machine's stand-ins, not the real models: "
            + "; ".join(parts) + ". They check the machinery and say nothing yet about the study's claims.")


def vae_rows(rec: Record) -> list[list[Cell]]:
    """The tuned VAE against the base VAE, on the reconstructions of the vae phase (`--tune-vae`): the same held-out
    images through both, so the difference is the tuning's alone."""
    claim = label(f"tuned VAE vs base VAE: {VAE_CLAIM[0]} ({VAE_CLAIM[1]})")
    runs = [r for r in rec.runs("vae") if any(k.startswith("tuned_vae.") for k in r.data.metrics)]
    if not runs:
        missing = Cell("-", kind="missing")
        return [[claim, label("-"), missing, missing, missing,
                 label("not measured: no vae phase in this run (sd-lora with --tune-vae)")]]
    run = max(runs, key=lambda r: r.info.start_time or 0)
    n = float(run.data.params.get("eval_samples", "nan"))
    rows = []
    for key in VAE_KEYS:
        tuned, base = (run.data.metrics.get(f"{which}.{key}") for which in ("tuned_vae", "base_vae"))
        if not (finite(tuned) and finite(base)):
            continue
        a, b = Measured({0: tuned}, n), Measured({0: base}, n)
        rows.append([claim, label(key), _cell(key, a), _cell(key, b), Cell(metric_text(key, tuned - base)),
                     label(verdict(key, a, b, ONE_VAE))])
        claim = label("")
    return rows


def conclusions_section(rec: Record) -> list[tuple[str, Any]]:
    """A paragraph on stand-ins (if any) and the table of claims against this run's measurements."""
    t = Table("5", "the study's conclusions, checked against this run's final models",
              ["the study's claim", "metric", "first", "second", "difference (first - second)", "against the noise"])
    finals = {f: finals_by_seed(rec, f) for f in rec.families}
    for c in CLAIMS:
        claim = label(f"{FAMILY_NAMES.get(c.first, c.first)} vs {FAMILY_NAMES.get(c.second, c.second)}: "
                      f"{c.claim} ({c.source})")
        absent = [f for f in (c.first, c.second) if not finals.get(f)]
        if absent:
            why = ", ".join(f + (" (no evaluated final run)" if f in rec.families else " (not in this run)")
                            for f in absent)
            t.rows.append([claim, label("-"), Cell("-", kind="missing"), Cell("-", kind="missing"),
                           Cell("-", kind="missing"), label(f"not measured: {why}")])
            continue
        a, b = finals[c.first], finals[c.second]
        for key in (*ACCURACY_KEYS, quality_key(a, b)):
            ma, mb = measured(a, key), measured(b, key)
            diff = metric_text(key, ma.mean - mb.mean) if ma and mb else "-"
            t.rows.append([claim, label(key), _cell(key, ma), _cell(key, mb), Cell(diff),
                           label(verdict(key, ma, mb) if ma and mb else "a value is missing")])
            claim = label("")
    t.rows.extend(vae_rows(rec))
    t.notes.append("values: each family's final run(s) on the final sample set (Table 4.4), n = samples; with "
                   "several seeds, the mean and each seed's value")
    t.notes.append("the seed-to-seed spread is max - min over a family's seeds; a difference 'exceeds' it when it "
                   "is larger than the larger family's spread")
    note = stand_in_note(rec)
    return ([("p", note)] if note else []) + [("table", t)]


__all__ = ["CLAIMS", "vae_rows", "conclusions_section", "stand_in_note", "verdict", "Measured", "finals_by_seed"]
