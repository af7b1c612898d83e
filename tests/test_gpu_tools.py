"""The GPU check's tools where no GPU is: the bundle's wheel repacking and the benchmark's CPU size
(`make gpu-check ARGS=--cpu` runs every step; this keeps the cheap parts in the suite)."""

from __future__ import annotations

import importlib.util
import json
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _bundle_module():
    spec = importlib.util.spec_from_file_location("gpu_bundle", ROOT / "infra" / "gpu_bundle.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_ray_is_repacked_without_its_jar_and_lzma_compressed(tmp_path):
    bundle = _bundle_module()
    wheel = tmp_path / "ray-1.0-cp312-cp312-manylinux2014_x86_64.whl"
    files = {"ray/__init__.py": b"x = 1\n", "ray/jars/ray_dist.jar": b"\0" * 4096, "ray/core/raylet": b"\x7fELF" * 512}
    record = "".join(f"{name},sha256=abc,{len(data)}\n" for name, data in files.items()) + "ray-1.0.dist-info/RECORD,,\n"
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in files.items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (0o755 if name.endswith("raylet") else 0o644) << 16
            z.writestr(info, data)
        z.writestr("ray-1.0.dist-info/RECORD", record)
    out = tmp_path / "out.whl"
    bundle.repack(wheel, out, bundle.RAY_UNUSED)
    with zipfile.ZipFile(out) as z:
        names = set(z.namelist())
        assert names == {"ray/__init__.py", "ray/core/raylet", "ray-1.0.dist-info/RECORD"}
        assert {i.compress_type for i in z.infolist()} == {zipfile.ZIP_LZMA}
        assert z.read("ray/core/raylet") == files["ray/core/raylet"]
        assert (z.getinfo("ray/core/raylet").external_attr >> 16) & 0o111  # still executable
        assert "jars" not in z.read("ray-1.0.dist-info/RECORD").decode()
    assert bundle.wheel_project(Path("mlflow_skinny-3.17.2-py3-none-any.whl")) == "mlflow-skinny"
    names, pins = bundle.device_packages()
    assert {"torch", "numpy", "opencv-python-headless"} <= names and "ray" not in names and "diffusers" not in names
    assert "torch==2.11.0" in pins


def test_the_benchmark_at_cpu_size_measures_the_peak_and_the_loader(tmp_path):
    from models.bench.gpu import parse_args, run

    saved = []
    args = parse_args(["--tiny", "--parts", "peak,loader", "--batch", "8", "--workers", "1"])
    out = run(args, save=lambda o: saved.append(json.loads(json.dumps(o))))
    assert out["peak_TFLOP_s"] >= 0 and saved and saved[-1]["loader"] == out["loader"]
    assert [r["workers"] for r in out["loader"]] == [0, 1] and all(r["img_s"] > 0 for r in out["loader"])
