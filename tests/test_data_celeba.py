"""CelebA + CelebA-Dialog readers and data.prepare, on fixture files in the real formats."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data.cache import FaceCache
from data.celeba import find_captions, read_annotation_file, read_captions, read_dialog_annotations, read_partition
from data.errors import DataError
from data.prepare import PrepareConfig, prepare
from tests.tools import run_module

ROOT = Path(__file__).resolve().parents[1]

# name -> (split, levels or None for unlabelled)
RECORDS = {
    "000001.jpg": (0, (0, 1, 2, 3, 4)),
    "000002.jpg": (0, (5, 0, 0, 1, 2)),
    "000003.jpg": (0, (1, 1, 1, 1, 1)),
    "000004.jpg": (1, (2, 3, 4, 5, 0)),
    "000005.jpg": (1, (0, 0, 5, 0, 5)),
    "000006.jpg": (2, (3, 2, 1, 0, 3)),
    "000007.jpg": (2, None),  # unlabelled, as 21 images of the real dataset are
}
HEADER = "img_name Bangs Eyeglasses No_Beard Smiling Young"


def _write_image(path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    img = np.zeros((218, 178, 3), np.uint8)
    img[:] = rng.integers(0, 255, 3)
    img[20:198, :, 0] = 200  # the centred 178x178 square is red-dominated
    Image.fromarray(img).save(path, quality=95)


@pytest.fixture
def celeba(tmp_path: Path) -> tuple[Path, Path]:
    celeba_root, dialog_root = tmp_path / "celeba", tmp_path / "dialog"
    (celeba_root / "img_align_celeba").mkdir(parents=True)
    dialog_root.mkdir()
    for i, name in enumerate(RECORDS):
        _write_image(celeba_root / "img_align_celeba" / name, i)
    (celeba_root / "list_eval_partition.txt").write_text("".join(f"{n} {s}\n" for n, (s, _) in RECORDS.items()))
    rows = [f"{n} {' '.join(map(str, lv))}" for n, (_, lv) in RECORDS.items() if lv is not None]
    (dialog_root / "combined_annotation.txt").write_text(HEADER + "\n" + "\n".join(rows) + "\n")
    captions = {
        "000001.jpg": {"overall_caption": "She has short bangs.", "attribute_wise_captions": {"Bangs": "x"}},
        "000002.jpg": {
            "overall_caption": None,
            "attribute_wise_captions": {"Bangs": "Full bangs.", "Eyeglasses": None},
        },
        "000003.jpg": {"overall_caption": "", "attribute_wise_captions": None},
        "000004.jpg": {"overall_caption": "He smiles broadly.", "attribute_wise_captions": {}},
        "999999.jpg": {"overall_caption": "Not in CelebA.", "attribute_wise_captions": {}},
    }
    (dialog_root / "captions.json").write_text(json.dumps(captions))
    return celeba_root, dialog_root


def run_prepare(celeba_root: Path, dialog_root: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    """`python -m data.prepare` on the fixture files, in-process."""
    return run_module("data.prepare", "--celeba-root", str(celeba_root), "--dialog-root", str(dialog_root), "--out",
                    str(out), "--size", "16", "--workers", "1", *extra, cwd=ROOT)


def test_readers_parse_exact_records(celeba):
    celeba_root, dialog_root = celeba
    assert read_partition(celeba_root / "list_eval_partition.txt") == {n: s for n, (s, _) in RECORDS.items()}
    labels, files = read_dialog_annotations(dialog_root)
    assert labels == {n: lv for n, (_, lv) in RECORDS.items() if lv is not None}
    assert [f.name for f in files] == ["combined_annotation.txt"]
    report = read_captions(dialog_root / "captions.json")
    assert report.captions["000001.jpg"] == "She has short bangs."
    assert report.captions["000002.jpg"] == "Full bangs."  # overall null -> attribute-wise text
    assert sorted(report.missing) == ["000003.jpg"]


def test_header_columns_are_mapped_by_name(tmp_path):
    path = tmp_path / "combined_annotation.txt"
    path.write_text("img_name Young Smiling No_Beard Eyeglasses Bangs\n000001.jpg 0 1 2 3 4\n")
    assert read_annotation_file(path, header=True) == {"000001.jpg": (4, 3, 2, 1, 0)}


def test_headerless_split_files(tmp_path):
    for i, name in enumerate(("train_attr_list.txt", "val_attr_list.txt", "test_attr_list.txt")):
        (tmp_path / name).write_text(f"00000{i}.jpg {i} 0 0 0 {5 - i}\n")
    labels, files = read_dialog_annotations(tmp_path)
    assert labels == {"000000.jpg": (0, 0, 0, 0, 5), "000001.jpg": (1, 0, 0, 0, 4), "000002.jpg": (2, 0, 0, 0, 3)}
    assert len(files) == 3


def test_prepare_builds_cache_with_celeba_split(celeba, tmp_path):
    celeba_root, dialog_root = celeba
    out = tmp_path / "cache"
    summary = prepare(PrepareConfig(celeba_root, dialog_root, out, size=16, workers=1), log=lambda *_: None)
    cache = FaceCache.open(out)
    labelled = [n for n, (_, lv) in RECORDS.items() if lv is not None]
    assert cache.names == labelled
    assert summary["counts"] == {"train": 3, "val": 2, "test": 1}
    assert summary["unlabelled"] == 1
    assert cache.images.shape == (6, 16, 16, 3) and cache.images.dtype == np.uint8
    np.testing.assert_array_equal(cache.levels, np.array([RECORDS[n][1] for n in labelled]))
    assert [cache.names[i] for i in cache.indices("val")] == ["000004.jpg", "000005.jpg"]
    assert cache.captions[0] == "She has short bangs." and cache.captions[2] == ""
    # The centre crop drops the top/bottom bands: the square is the red block.
    assert cache.images[0, :, :, 0].mean() > 190
    assert "combined_annotation.txt" in cache.manifest["source"]["checksums_md5"]
    assert any("captions for unknown images" in w for w in summary["warnings"])


def _error_line(result: subprocess.CompletedProcess) -> str:
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert result.returncode != 0
    assert lines and lines[-1].startswith("error: "), result.stderr
    return lines[-1]


def test_cli_writes_cache_and_summary(celeba, tmp_path):
    celeba_root, dialog_root = celeba  # the real command, a process of its own
    result = subprocess.run([sys.executable, "-m", "data.prepare", "--celeba-root", str(celeba_root), "--dialog-root",
                             str(dialog_root), "--out", str(tmp_path / "out"), "--size", "16", "--workers", "1"],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "train 3, val 2, test 1" in result.stdout
    assert "1 captions for unknown images" in result.stdout


@pytest.mark.parametrize(
    "breakage, expected",
    [
        (
            lambda c, d: (d / "combined_annotation.txt").write_text(HEADER + "\n000001.jpg 0 1 2 3 6\n"),
            "combined_annotation.txt:2: level 6 outside 0..5",
        ),
        (
            lambda c, d: (d / "combined_annotation.txt").write_text(HEADER + "\n000001.jpg 0 1 2 3\n"),
            "combined_annotation.txt:2: expected an image name and 5 levels, got 5 columns",
        ),
        (
            lambda c, d: (d / "combined_annotation.txt").write_text(
                HEADER + "\n000001.jpg 0 0 0 0 0\n000001.jpg 1 1 1 1 1\n"
            ),
            "combined_annotation.txt:3: duplicate row for 000001.jpg (first at line 2)",
        ),
        (
            lambda c, d: (c / "list_eval_partition.txt").write_text("000001.jpg 0\n000001.jpg 1\n"),
            "list_eval_partition.txt:2: duplicate row",
        ),
        (
            lambda c, d: (c / "list_eval_partition.txt").write_text("000001.jpg 3\n"),
            "list_eval_partition.txt:1: expected '<image> <0|1|2>'",
        ),
        (lambda c, d: (c / "list_eval_partition.txt").unlink(), "list_eval_partition.txt not found"),
        (lambda c, d: (d / "combined_annotation.txt").unlink(), "no combined_annotation.txt nor"),
        (
            lambda c, d: (c / "img_align_celeba" / "000002.jpg").unlink(),
            "000002.jpg is listed in list_eval_partition.txt but absent",
        ),
        (
            lambda c, d: (c / "img_align_celeba" / "000003.jpg").write_bytes(b"not a jpeg"),
            "000003.jpg is not a readable image",
        ),
        (lambda c, d: (d / "captions.json").write_text("{broken"), "captions.json:1: invalid JSON"),
    ],
)
def test_bad_input_gives_one_line_error_and_no_output(celeba, tmp_path, breakage, expected):
    breakage(*celeba)
    out = tmp_path / "out"
    line = _error_line(run_prepare(*celeba, out))
    assert expected in line
    assert not out.exists()
    assert not list(tmp_path.glob(".out.partial-*"))


def test_missing_roots(tmp_path, celeba):
    line = _error_line(run_prepare(tmp_path / "nope", celeba[1], tmp_path / "out"))
    assert "CelebA root" in line and "--celeba-root" in line
    line = _error_line(run_prepare(celeba[0], tmp_path / "nope", tmp_path / "out"))
    assert "CelebA-Dialog root" in line and "--dialog-root" in line


def test_skip_bad_skips_and_reports_each(celeba, tmp_path):
    celeba_root, dialog_root = celeba
    (celeba_root / "img_align_celeba" / "000003.jpg").write_bytes(b"not a jpeg")
    (celeba_root / "img_align_celeba" / "000005.jpg").unlink()
    result = run_prepare(celeba_root, dialog_root, tmp_path / "out", "--skip-bad")
    assert result.returncode == 0, result.stderr
    assert "skipped" in result.stdout and "000003.jpg" in result.stdout
    cache = FaceCache.open(tmp_path / "out")
    assert cache.names == ["000001.jpg", "000002.jpg", "000004.jpg", "000006.jpg"]
    assert cache.images.shape[0] == 4
    assert cache.manifest["prepare_summary"]["skipped"] == {"count": 2, "reasons": {"absent": 1, "corrupt": 1}}
    np.testing.assert_array_equal(cache.levels[2], RECORDS["000004.jpg"][1])


def test_existing_output_is_never_overwritten(celeba, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert "already exists" in _error_line(run_prepare(*celeba, out))
    assert (out / "keep.txt").read_text() == "mine"


# --- captions: where captions.json is found, and what happens when it cannot be trusted ---

CAPTIONED = {"train": 2, "val": 1, "test": 0}  # 000001, 000002 (attribute-wise), 000004; 000003 is empty


def _move_captions(dialog_root: Path, sub: str) -> Path:
    dest = dialog_root / sub / "captions.json"
    dest.parent.mkdir(parents=True, exist_ok=True)
    (dialog_root / "captions.json").rename(dest)
    return dest


@pytest.mark.parametrize("sub", ["text", "CelebA-Dialog", "CelebA-Dialog/text"])
def test_cli_finds_captions_in_a_subfolder(celeba, tmp_path, sub):
    celeba_root, dialog_root = celeba
    path = _move_captions(dialog_root, sub)
    result = run_prepare(celeba_root, dialog_root, tmp_path / "out")
    assert result.returncode == 0, result.stderr
    assert f"captions: using {path}" in result.stdout
    assert f"captions: 3 of 6 images have a non-empty caption (from {path})" in result.stdout
    cache = FaceCache.open(tmp_path / "out")
    assert cache.captions[:4] == ["She has short bangs.", "Full bangs.", "", "He smiles broadly."]
    info = cache.manifest["captions"]
    assert info["source"] == str(path.resolve()) and info["chosen_by"] == "search" and info["waived"] is False
    assert info["md5"] == hashlib.md5(path.read_bytes()).hexdigest()
    assert info["images"] == 6 and info["non_empty"] == 3 and info["non_empty_per_split"] == CAPTIONED


def test_cli_several_captions_files_is_an_error_naming_all(celeba, tmp_path):
    celeba_root, dialog_root = celeba
    copy = dialog_root / "CelebA-Dialog" / "captions.json"
    copy.parent.mkdir()
    copy.write_text((dialog_root / "captions.json").read_text())
    out = tmp_path / "out"
    line = _error_line(run_prepare(celeba_root, dialog_root, out))
    assert str(dialog_root / "captions.json") in line and str(copy) in line and "--captions PATH" in line
    assert not out.exists() and not list(tmp_path.glob(".out.partial-*"))


def test_cli_explicit_captions_path_wins_over_search(celeba, tmp_path):
    celeba_root, dialog_root = celeba
    explicit = tmp_path / "elsewhere" / "dialog_captions.json"
    explicit.parent.mkdir()
    (dialog_root / "captions.json").rename(explicit)
    (dialog_root / "a").mkdir()
    (dialog_root / "b").mkdir()
    for decoy in (dialog_root / "a" / "captions.json", dialog_root / "b" / "captions.json"):
        decoy.write_text("{broken")  # the search alone would stop here
    result = run_prepare(celeba_root, dialog_root, tmp_path / "out", "--captions", str(explicit))
    assert result.returncode == 0, result.stderr
    assert f"captions: 3 of 6 images have a non-empty caption (from {explicit})" in result.stdout
    cache = FaceCache.open(tmp_path / "out")
    assert cache.captions[0] == "She has short bangs."
    info = cache.manifest["captions"]
    assert info["source"] == str(explicit.resolve()) and info["chosen_by"] == "--captions" and info["non_empty"] == 3
    assert "dialog_captions.json" in cache.manifest["source"]["checksums_md5"]


def test_cli_missing_explicit_captions_path(celeba, tmp_path):
    missing = tmp_path / "nope" / "captions.json"
    line = _error_line(run_prepare(*celeba, tmp_path / "out", "--captions", str(missing)))
    assert f"--captions {missing} does not exist" in line
    assert not (tmp_path / "out").exists()


def test_cli_no_captions_file_is_an_error_unless_waived(celeba, tmp_path):
    celeba_root, dialog_root = celeba
    (dialog_root / "captions.json").unlink()
    line = _error_line(run_prepare(celeba_root, dialog_root, tmp_path / "out"))
    assert f"no captions.json in {dialog_root}" in line and "--captions PATH" in line and "--no-captions" in line
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.partial-*"))

    result = run_prepare(celeba_root, dialog_root, tmp_path / "out", "--no-captions")
    assert result.returncode == 0, result.stderr
    assert "waived with --no-captions" in result.stdout
    cache = FaceCache.open(tmp_path / "out")
    assert cache.captions == [""] * 6
    assert cache.manifest["captions"] == {
        "source": None,
        "md5": None,
        "chosen_by": None,
        "waived": True,
        "images": 6,
        "non_empty": 0,
        "non_empty_per_split": {"train": 0, "val": 0, "test": 0},
    }


@pytest.mark.parametrize(
    "content, expected",
    [
        ("{broken", ":1: invalid JSON"),
        ('{"000001.jpg": {"overall_caption": "x"}\n,,}', ":2: invalid JSON"),
        (b"\xff\xfe{}", "is not UTF-8 text"),
        ("[]", "expected a JSON object mapping image names to captions, got a JSON list"),
        ('{"000001.jpg": ["She has bangs."]}', "the entry for '000001.jpg' is a JSON list"),
        ('{"000001.jpg": {"caption": "She has bangs."}}', "no entry has overall_caption or attribute_wise_captions"),
        ("{}", "none of the 6 images has a non-empty caption (0 entries, 0 naming these images)"),
        (
            json.dumps({n: {"overall_caption": None, "attribute_wise_captions": None} for n in RECORDS}),
            "none of the 6 images has a non-empty caption (7 entries, 6 naming these images)",
        ),
    ],
)
def test_cli_bad_captions_in_a_subfolder_is_a_one_line_error(celeba, tmp_path, content, expected):
    celeba_root, dialog_root = celeba
    path = _move_captions(dialog_root, "text")
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    out = tmp_path / "out"
    result = run_prepare(celeba_root, dialog_root, out)
    line = _error_line(result)
    assert line.startswith(f"error: {path}") and expected in line, line
    assert "--captions PATH" in line
    assert len(result.stderr.strip().splitlines()) == 1
    assert not out.exists() and not list(tmp_path.glob(".out.partial-*"))


def test_find_captions_search_is_bounded(tmp_path):
    root = tmp_path / "dialog"
    for sub in ("", "a", "a/b/c/d", ".hidden", "img_align_celeba", "a/b/c/d/e"):
        (root / sub).mkdir(parents=True, exist_ok=True)
        (root / sub / "captions.json").write_text("{}")
    (root / "link").symlink_to(root / "a", target_is_directory=True)  # the same file by another path counts once
    found = find_captions(root)
    assert found == [root / "captions.json", root / "a" / "captions.json", root / "a/b/c/d" / "captions.json"]
    assert find_captions(tmp_path / "empty-and-absent") == []


def test_captions_and_no_captions_contradict(celeba, tmp_path):
    celeba_root, dialog_root = celeba
    cfg = PrepareConfig(
        celeba_root,
        dialog_root,
        tmp_path / "out",
        size=16,
        workers=1,
        captions=dialog_root / "captions.json",
        no_captions=True,
    )
    with pytest.raises(DataError, match="contradict"):
        prepare(cfg, log=lambda *_: None)
    assert not (tmp_path / "out").exists()
