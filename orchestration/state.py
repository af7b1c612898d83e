"""A sweep's directory under --storage-path and its `sweep.json`: what `--resume` needs to continue.

    <storage_path>/<experiment>-<search>-<YYYYmmdd-HHMMSS>/
        sweep.json     the resolved config, the MLflow experiment and parent run, every phase's status and result
        <family>/grid/ the Ray Tune experiment of a family's grid (or Optuna) phase: Tuner.restore reads it
        <family>/final/  the Ray Tune experiment of its final run (final-seed<N>/: of a further seed, --final-seeds)
        <family>/cfg/, <family>/samplers/   CFG-sweep and sampler-phase outputs (PNGs)

A phase is a unit: `phases[name] = {"status": "running" | "done", "result": ...}`. `--resume` skips a done
phase (its recorded result stands in) and continues a running one. `sweep.json` is rewritten atomically
after every change.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from data.catalogue import split_credentials
from data.io import atomic_write_text
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
        storage = config.storage_dir.resolve()
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
    def find(cls, config: SweepConfig, target: str | None = None) -> SweepState:
        """The sweep `--resume [target]` means: the named one (a directory, or a directory name under the
        storage path), else the only unfinished sweep of this experiment; several -> an error listing them."""
        storage = config.storage_dir.resolve()
        if target:
            root = Path(target) if Path(target).is_dir() else storage / target
            if not (root / STATE_FILE).is_file():
                raise SweepError(f"nothing to resume at {target}: no {STATE_FILE} in {root}; pass a sweep directory "
                                 f"under {storage} (or its name)")
            state = cls.load(root)
            if state.finished:
                raise SweepError(f"nothing to resume: the sweep {root} finished; run without --resume to start a new one")
            return state
        candidates = sorted(storage.glob(f"{config.run_name}-*/{STATE_FILE}"), key=lambda p: p.stat().st_mtime)
        if not candidates:
            raise SweepError(f"nothing to resume: no sweep {config.run_name!r} under {storage}; "
                             "run without --resume to start one (same --experiment/--storage-path/--search)")
        unfinished = [p.parent for p in candidates if not cls.load(p.parent).finished]
        if not unfinished:
            raise SweepError(f"nothing to resume: every sweep {config.run_name!r} under {storage} finished (latest "
                             f"{candidates[-1].parent.name}); run without --resume to start a new one")
        if len(unfinished) > 1:
            raise SweepError(f"{len(unfinished)} unfinished sweeps of {config.run_name!r}: pass one to --resume: "
                             + ", ".join(p.name for p in unfinished))
        return cls.load(unfinished[0])

    @property
    def finished(self) -> bool:
        return bool(self.phases.get("sweep", {}).get("status") == "done")

    # --- phases as units -------------------------------------------------------------------------
    def status(self, phase: str) -> str | None:
        """None (never started), "running" (started, cut short) or "done"."""
        record = self.phases.get(phase)
        return record.get("status") if isinstance(record, dict) else None

    def result(self, phase: str) -> Any:
        return (self.phases.get(phase) or {}).get("result")

    def start(self, phase: str) -> bool:
        """Mark `phase` running; True when it had been started before (a resumed phase continues)."""
        continuing = self.status(phase) == "running"
        self.phases[phase] = {"status": "running", "started": time.time(), "result": None}
        self.save()
        return continuing

    def done(self, phase: str, result: Any = None) -> None:
        self.phases[phase] = {"status": "done", "finished": time.time(), "result": result}
        self.save()

    def keep_training_path(self, cfg: SweepConfig) -> None:
        """Refuse a resumed config whose --final-workers would switch a final run cut short to another trainer, else
        record the value its final runs train with. 1 worker trains in one Tune trial, more in Ray Train, and
        neither reads the other's checkpoints: the run would restart from scratch while MLflow keeps the epochs
        logged before, which then no longer match the registered model. Refused rather than carried over: the
        operator named the flag, and runtime flags are honoured on resume (a refusal costs seconds, before Ray)."""
        before, after = self.config.final_workers, cfg.final_workers
        cut = [f for f in self.config.families if self.status(f"{f}/final") == "running"]
        if cut and (before > 1) != (after > 1):
            trainer = {True: "Ray Train", False: "a Tune trial"}
            raise SweepError(f"--final-workers {after} would restart the {' and '.join(cut)} final run cut short "
                             f"with --final-workers {before} (its checkpoints are {trainer[before > 1]}'s, which "
                             f"{trainer[after > 1]} cannot read): resume with --final-workers {before} or without "
                             "the flag")
        if after != before:
            self.config = dataclasses.replace(self.config, final_workers=after)
            self.save()

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
        config = dataclasses.asdict(self.config)
        if config.get("tracking_uri"):  # never a credential on disk: a resumed sweep takes them as the first did
            config["tracking_uri"] = split_credentials(config["tracking_uri"])[0]
        data = {
            "config": config,
            "tracking_uri": split_credentials(self.tracking_uri)[0],
            "parent_run_id": self.parent_run_id,
            "phases": self.phases,
        }
        atomic_write_text(self.root / STATE_FILE, json.dumps(data, indent=2))

    def dir(self, name: str) -> Path:
        path = self.root / name
        path.mkdir(parents=True, exist_ok=True)
        return path


def _tuples(v: Any) -> Any:
    """JSON lists back to the tuples the frozen config uses."""
    if isinstance(v, list):
        return tuple(_tuples(x) for x in v)
    return v
