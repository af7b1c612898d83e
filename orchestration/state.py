"""A sweep's directory under --storage-path and its `sweep.json`: what `--resume` needs to continue.

    <storage_path>/<experiment>-<search>-<YYYYmmdd-HHMMSS>/
        sweep.json     the resolved config, the MLflow experiment and parent run, which phases are done
        grid/          the Ray Tune experiment of the grid (or Optuna) phase: Tuner.restore reads it
        final/         the Ray Tune experiment of the final run
        cfg/           CFG-sweep outputs (samples, Pareto PNG)

`sweep.json` is rewritten atomically after every change.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestration.config import SweepConfig
from orchestration.errors import SweepError

STATE_FILE = "sweep.json"


@dataclass
class SweepState:
    root: Path
    config: SweepConfig
    tracking_uri: str
    parent_run_id: str | None = None
    phases: dict[str, Any] = field(default_factory=dict)  # phase -> its result (set when the phase is done)

    @classmethod
    def create(cls, config: SweepConfig, tracking_uri: str) -> SweepState:
        storage = Path(config.storage_path).resolve()
        stamp = time.strftime("%Y%m%d-%H%M%S")
        root = storage / f"{config.run_name}-{stamp}"
        n = 1
        while root.exists():
            n += 1
            root = storage / f"{config.run_name}-{stamp}-{n}"
        root.mkdir(parents=True)
        state = cls(root=root, config=config, tracking_uri=tracking_uri)
        state.save()
        return state

    @classmethod
    def latest(cls, config: SweepConfig) -> SweepState:
        """The most recent unfinished sweep of this experiment under the storage path."""
        storage = Path(config.storage_path).resolve()
        candidates = sorted(storage.glob(f"{config.run_name}-*/{STATE_FILE}"), key=lambda p: p.stat().st_mtime)
        if not candidates:
            raise SweepError(f"nothing to resume: no sweep {config.run_name!r} under {storage}; "
                             "run without --resume to start one (same --experiment/--storage-path/--search)")
        state = cls.load(candidates[-1].parent)
        if state.phases.get("done"):
            raise SweepError(f"nothing to resume: the latest sweep {state.root} finished; run without --resume "
                             "to start a new one")
        return state

    @classmethod
    def load(cls, root: str | Path) -> SweepState:
        root = Path(root)
        raw = json.loads((root / STATE_FILE).read_text())
        fields = {f.name: f for f in dataclasses.fields(SweepConfig)}
        values = {}
        for k, v in raw["config"].items():
            if k in fields:
                values[k] = _tuples(v)
        config = SweepConfig(**values)
        return cls(root=root, config=config, tracking_uri=raw["tracking_uri"], parent_run_id=raw.get("parent_run_id"),
                   phases=raw.get("phases", {}))

    def save(self) -> None:
        data = {
            "config": dataclasses.asdict(self.config),
            "tracking_uri": self.tracking_uri,
            "parent_run_id": self.parent_run_id,
            "phases": self.phases,
        }
        tmp = self.root / f".{STATE_FILE}.tmp"
        tmp.write_text(json.dumps(data, indent=2))
        os.replace(tmp, self.root / STATE_FILE)

    def mark(self, phase: str, result: Any = True) -> None:
        self.phases[phase] = result
        self.save()

    def dir(self, name: str) -> Path:
        path = self.root / name
        path.mkdir(parents=True, exist_ok=True)
        return path


def _tuples(v: Any) -> Any:
    """JSON lists back to the tuples the frozen config uses."""
    if isinstance(v, list):
        return tuple(_tuples(x) for x in v)
    return v
