"""Figure 4.10: each final model's samples beside their 256 px versions by DeepFloyd IF stage II (--superres), or
why they are unavailable -- never anything in their place."""

from __future__ import annotations

from typing import Any

from orchestration.report.document import Figure, Panel
from orchestration.report.record import Record

NOT_REQUESTED = ("not requested: the sweep ran without --superres (pass DeepFloyd/IF-II-M-v1.0, present in the local "
                 "Hugging Face cache, or a folder of it)")


def superres_section(rec: Record) -> list[tuple[str, Any]]:
    requested = rec.params.get("superres", "none") not in ("none", "")
    panels = []
    for f in rec.families:
        run = rec.one("superres", f)
        if run is None:
            reason = NOT_REQUESTED if not requested else "no super-resolution run recorded yet"
            panels.append(Panel(f"{f}: IF stage II, 256 px", None, "", f"unavailable: {reason}"))
            continue
        reason = Record.unavailable(run).get("superres")
        low = rec.artifact(run, "superres/samples.png")
        high = rec.artifact(run, "superres/superres.png")
        if reason or high is None:
            panels.append(Panel(f"{f}: IF stage II, 256 px", None, "",
                                f"unavailable: {reason or f'the run logged no PNG (status {run.info.status})'}"))
            continue
        panels += [Panel(f"{f} final model ({run.data.params.get('samples', '?')} samples)", low,
                         f"fig4.10_{f}_samples.png"),
                   Panel(f"{f}: after IF stage II ({run.data.params.get('superres', '?')})", high,
                         f"fig4.10_{f}_superres.png")]
    return [("figure", Figure("4.10", "the final samples after super-resolution to 256 px (DeepFloyd IF stage II)",
                              panels, "The study upscaled some generated 64 px images with IF's second stage, as a "
                                      "test (§4.3). Same conditions left and right; the upscaler reads each "
                                      "image's caption."))]


__all__ = ["superres_section", "NOT_REQUESTED"]
