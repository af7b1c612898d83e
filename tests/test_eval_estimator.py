"""The attribute estimator: learns the synthetic faces, saves/loads exactly, caches, and its CLI checks input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from data.cache import FaceCache
from data.schema import ATTRIBUTES
from evaluation.errors import EvalError
from evaluation.estimator import AttributeEstimator, estimator_preset
from evaluation.estimator_cache import ensure_estimator
from evaluation.train_estimator import main, train_estimator
from tests.eval_helpers import face_cache  # noqa: F401

CHANCE = 1 / 6


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    return face_cache(tmp_path_factory.mktemp("est"), size=16, n_train=1200, n_val=240, n_test=120)


@pytest.fixture(scope="module")
def trained(faces, tmp_path_factory):
    out = tmp_path_factory.mktemp("est-out") / "estimator"
    config = estimator_preset("small", full_epochs=5, batch_size=32)
    report = train_estimator(faces, config, out, progress=False, log=lambda _: None)
    return out, report


def test_learns_the_synthetic_faces_well_above_chance(trained):
    _, report = trained
    # 1200 faces x 5 epochs reach ~0.47 balanced (the full 20k-face run reaches ~0.93); chance is 1/6
    assert report["val"]["est_acc_balanced"] > 2 * CHANCE
    assert report["test"]["est_acc_balanced"] > 2 * CHANCE
    assert report["history"][-1]["loss"] < report["history"][0]["loss"]


def test_writes_weights_report_and_confusion_pngs(trained, faces):
    out, report = trained
    assert {p.name for p in out.iterdir()} >= {"estimator.safetensors", "config.json", "report.json",
                                               *(f"confusion_{a}.png" for a in ATTRIBUTES)}
    saved = json.loads((out / "report.json").read_text())
    assert saved["val"] == report["val"] and len(saved["history"]) == 5
    cm = np.asarray(saved["val_confusion"]["smiling"])
    assert cm.shape == (6, 6) and cm.sum() == len(FaceCache.open(faces).indices("val"))
    assert not list(out.parent.glob(".*partial*"))


def test_reloaded_estimator_predicts_identically(trained, faces):
    out, report = trained
    cache = FaceCache.open(faces)
    val = cache.indices("val")
    images = torch.from_numpy(np.asarray(cache.images[val])).permute(0, 3, 1, 2)
    model = AttributeEstimator.load(out)
    predicted = model.predict(images).numpy()
    assert float(np.mean(predicted == cache.levels[val])) == pytest.approx(report["val"]["est_acc"])


def test_ensure_estimator_trains_once_and_reuses(faces, tmp_path, monkeypatch):
    monkeypatch.setenv("CONDFACE_HOME", str(tmp_path))
    first = ensure_estimator(faces, preset="small", full_epochs=1, train_limit=64, progress=False)
    stamp = (first / "estimator.safetensors").stat().st_mtime_ns
    again = ensure_estimator(faces, preset="small", full_epochs=1, train_limit=64, progress=False)
    assert again == first and (again / "estimator.safetensors").stat().st_mtime_ns == stamp
    assert first.is_relative_to(tmp_path / "estimators")
    other = ensure_estimator(faces, preset="small", full_epochs=1, train_limit=32, progress=False)
    assert other != first  # a different config is a different cached estimator


def test_the_cached_estimator_keys_on_the_data_not_on_when_it_was_drawn(tmp_path):
    """The same faces drawn twice (another test session, another machine) share one estimator; other faces do not."""
    from evaluation.estimator_cache import estimator_cache_dir

    config = estimator_preset("small")
    first, again = (face_cache(tmp_path / name, n_train=8, n_val=2, n_test=2) for name in ("a", "b"))
    manifest = json.loads((again / "manifest.json").read_text())
    (again / "manifest.json").write_text(json.dumps({**manifest, "created": "2000-01-01T00:00:00Z"}))
    assert estimator_cache_dir(first, config) == estimator_cache_dir(again, config)
    other = face_cache(tmp_path / "c", n_train=8, n_val=2, n_test=2, seed=1)
    assert estimator_cache_dir(other, config) != estimator_cache_dir(first, config)


def test_missing_estimator_names_the_command_to_train_one(tmp_path):
    with pytest.raises(EvalError, match="python -m evaluation.train_estimator"):
        AttributeEstimator.load(tmp_path)


@pytest.mark.parametrize("args,message", [
    (["--data", "{tmp}/no-cache", "--out", "{tmp}/o"], "does not exist"),
    (["--data", "{faces}", "--out", "{faces}"], "already exists"),
    (["--data", "{faces}", "--out", "{tmp}/o", "--epochs", "-1"], "must be positive"),
    (["--data", "{faces}", "--out", "{tmp}/o", "--augment", "wild"], "unknown augmentation"),
])
def test_cli_bad_input_is_a_one_line_error(faces, tmp_path, args, message, capsys):
    argv = [a.format(tmp=tmp_path, faces=faces) for a in args]
    with pytest.raises(SystemExit) as err:
        main(argv + ["--quiet"])
    text = str(err.value.code)
    assert text.startswith("error: ") and message in text and "\n" not in text
    assert not (tmp_path / "o").exists()


def test_pretrained_backbone_phase_one_trains_only_the_heads(faces, tmp_path):
    from transformers import ResNetModel

    from tests.eval_helpers import TINY_ESTIMATOR

    torch.manual_seed(3)
    ResNetModel(TINY_ESTIMATOR.resnet_config()).save_pretrained(tmp_path / "backbone")
    config = TINY_ESTIMATOR.replace(pretrained=str(tmp_path / "backbone"), heads_epochs=1, full_epochs=0,
                                    train_limit=96)
    report = train_estimator(faces, config, tmp_path / "est", progress=False, log=lambda _: None)
    assert report["note"].startswith("backbone initialised from")
    assert [h["phase"] for h in report["history"]] == ["heads"]
    trained = AttributeEstimator.load(tmp_path / "est").backbone.state_dict()
    original = ResNetModel.from_pretrained(tmp_path / "backbone").state_dict()
    assert all(torch.equal(trained[k], original[k]) for k in original)  # frozen, BatchNorm statistics included


def test_unloadable_pretrained_weights_train_from_scratch_and_say_so(faces, tmp_path):
    from tests.eval_helpers import TINY_ESTIMATOR

    config = TINY_ESTIMATOR.replace(pretrained=str(tmp_path / "no-weights"), heads_epochs=1, full_epochs=1,
                                    train_limit=64)
    report = train_estimator(faces, config, tmp_path / "est", progress=False, log=lambda _: None)
    assert "FROM SCRATCH" in report["note"]
    assert [h["phase"] for h in report["history"]] == ["full"]


def test_degraded_training_images_keep_their_labels(faces):
    from data.dataset import FaceDataset
    from evaluation.degrade import Degraded

    clean = FaceDataset(faces, "train", limit=40)
    always, never = Degraded(clean, 1.0, seed=0), Degraded(clean, 0.0, seed=0)
    changed = sum(not torch.equal(always[i]["image"], clean[i]["image"]) for i in range(len(clean)))
    assert changed >= 30
    assert all(torch.equal(never[i]["image"], clean[i]["image"]) for i in range(len(clean)))
    assert all(torch.equal(always[i]["levels"], clean[i]["levels"]) and always[i]["caption"] == clean[i]["caption"]
               for i in range(len(clean)))


def test_default_speed_options_on_this_cpu_are_recorded(trained):
    out, report = trained
    from models.runtime import CPU_AUTO, cpu_supports_bf16

    auto = CPU_AUTO["estimator"]
    assert report["speed_options"] == {"precision": "bf16" if auto.bf16 and cpu_supports_bf16() else "fp32",
                                       "channels_last": auto.channels_last, "compile": False}
    assert json.loads((out / "report.json").read_text())["speed_options"] == report["speed_options"]


def test_bf16_channels_last_training_learns_and_saves_plain_fp32_weights(faces, tmp_path):
    config = estimator_preset("small", full_epochs=3, batch_size=32, mixed_precision="bf16", channels_last=True)
    lines = []
    report = train_estimator(faces, config, tmp_path / "est", progress=False, log=lines.append)
    assert report["speed_options"] == {"precision": "bf16", "channels_last": True, "compile": False}
    assert "training in bf16, channels_last on, torch.compile off" in lines[0]
    assert report["history"][-1]["loss"] < report["history"][0]["loss"]
    assert report["val"]["est_acc"] > 1.5 * CHANCE
    model = AttributeEstimator.load(tmp_path / "est")
    assert all(p.dtype == torch.float32 and p.is_contiguous() for p in model.parameters())
    assert model.config.mixed_precision == "bf16" and model.config.channels_last is True


def test_a_bad_precision_is_a_one_line_error(faces, tmp_path):
    with pytest.raises(EvalError, match="mixed_precision must be auto, bf16 or no, got 'fp8'"):
        train_estimator(faces, estimator_preset("small", mixed_precision="fp8"), tmp_path / "est", progress=False)
    assert not (tmp_path / "est").exists()


def test_auto_follows_the_estimators_own_cpu_defaults_not_the_engines(monkeypatch):
    import evaluation.train_estimator as trainer
    import models.runtime as runtime
    from models.runtime import CpuAuto

    config = estimator_preset("small")
    for estimator_flag, engine_flag, native in ((True, False, True), (False, True, True), (True, False, False)):
        monkeypatch.setitem(runtime.CPU_AUTO, "estimator", CpuAuto(estimator_flag, estimator_flag))
        monkeypatch.setitem(runtime.CPU_AUTO, "train", CpuAuto(engine_flag, engine_flag))
        monkeypatch.setattr(runtime, "cpu_supports_bf16", lambda n=native: n)
        options = trainer.speed_options(config, torch.device("cpu"))
        assert options["precision"] == ("bf16" if estimator_flag and native else "fp32")
        assert options["channels_last"] is estimator_flag
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))  # a GPU with native bf16
    assert trainer.speed_options(config.replace(mixed_precision="no"), torch.device("cuda"))["precision"] == "fp32"
    assert trainer.speed_options(config, torch.device("cuda")) == {"precision": "bf16", "channels_last": True,
                                                                   "compile": False}
