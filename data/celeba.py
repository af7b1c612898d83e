"""Readers for the real files: CelebA (aligned & cropped) and CelebA-Dialog annotations and captions.

Every reader returns plain Python records and raises `DataError` with the file, the line and the fix
when the input is wrong. Nothing here touches images beyond checking that they exist.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from data.errors import DataError
from data.schema import DIALOG_COLUMNS, NUM_ATTRIBUTES, NUM_LEVELS

IMAGE_DIR = "img_align_celeba"
PARTITION_FILE = "list_eval_partition.txt"
COMBINED_ANNOTATION = "combined_annotation.txt"
SPLIT_ANNOTATIONS = ("train_attr_list.txt", "val_attr_list.txt", "test_attr_list.txt")
CAPTIONS_FILE = "captions.json"
CAPTION_SEARCH_DEPTH = 4  # folder levels below the dialog root searched for captions.json
CAPTION_SEARCH_MAX_FOLDERS = 5000  # a dialog root with more folders than this is not a CelebA-Dialog download
_CAPTION_SEARCH_SKIP = {IMAGE_DIR, "__pycache__", "node_modules"}
_CAPTION_KEYS = ("overall_caption", "attribute_wise_captions")


@dataclass(frozen=True)
class CaptionReport:
    captions: dict[str, str]
    missing: list[str] = field(default_factory=list)  # entries whose captions were null or empty


def _lines(path: Path):
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise DataError(f"{path} not found: check the dataset root you passed") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not a text file ({e.reason}): replace it with the original download") from None
    for lineno, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            yield lineno, line.split()


def read_partition(path: str | Path) -> dict[str, int]:
    """`list_eval_partition.txt`: `000001.jpg 0` per line, 0 train / 1 val / 2 test."""
    path = Path(path)
    out: dict[str, int] = {}
    first_line: dict[str, int] = {}
    for lineno, cols in _lines(path):
        if len(cols) != 2 or cols[1] not in ("0", "1", "2"):
            raise DataError(
                f"{path}:{lineno}: expected '<image> <0|1|2>', got {' '.join(cols)!r}: fix or restore the file"
            )
        name = cols[0]
        if name in out:
            raise DataError(f"{path}:{lineno}: duplicate row for {name} (first at line {first_line[name]}): remove one")
        out[name], first_line[name] = int(cols[1]), lineno
    if not out:
        raise DataError(f"{path} is empty: restore the original partition file")
    return out


def _parse_levels(path: Path, lineno: int, cols: list[str], order: list[int]) -> tuple[int, ...]:
    if len(cols) != NUM_ATTRIBUTES + 1:
        raise DataError(
            f"{path}:{lineno}: expected an image name and {NUM_ATTRIBUTES} levels, got {len(cols)} columns: fix the line"
        )
    try:
        values = [int(v) for v in cols[1:]]
    except ValueError:
        raise DataError(f"{path}:{lineno}: levels must be integers, got {' '.join(cols[1:])!r}: fix the line") from None
    bad = [v for v in values if not 0 <= v < NUM_LEVELS]
    if bad:
        raise DataError(f"{path}:{lineno}: level {bad[0]} outside 0..{NUM_LEVELS - 1} for {cols[0]}: fix the label")
    return tuple(values[i] for i in order)


def read_annotation_file(path: str | Path, header: bool) -> dict[str, tuple[int, ...]]:
    """One CelebA-Dialog attribute file -> {image: (bangs, eyeglasses, beard, smiling, age)}.

    With `header`, the first line names the columns and they are mapped by name when they are
    the CelebA-Dialog names; otherwise (and for header-less files) the column order is DIALOG_COLUMNS.
    """
    path = Path(path)
    rows = _lines(path)
    order = list(range(NUM_ATTRIBUTES))
    if header:
        try:
            lineno, names = next(rows)
        except StopIteration:
            raise DataError(f"{path} is empty: restore the original annotation file") from None
        names = [n for n in names if n.lower() not in ("img_name", "image", "image_name", "name")]
        if set(DIALOG_COLUMNS) <= set(names):
            order = [names.index(c) for c in DIALOG_COLUMNS]
        elif len(names) != NUM_ATTRIBUTES:
            raise DataError(f"{path}:{lineno}: header should name {' '.join(DIALOG_COLUMNS)}, got {' '.join(names)!r}")
    out: dict[str, tuple[int, ...]] = {}
    first_line: dict[str, int] = {}
    for lineno, cols in rows:
        levels = _parse_levels(path, lineno, cols, order)
        name = cols[0]
        if name in out:
            raise DataError(f"{path}:{lineno}: duplicate row for {name} (first at line {first_line[name]}): remove one")
        out[name], first_line[name] = levels, lineno
    return out


def read_dialog_annotations(dialog_root: str | Path) -> tuple[dict[str, tuple[int, ...]], list[Path]]:
    """All labels of a CelebA-Dialog root: `combined_annotation.txt` if present, else the three split files."""
    root = Path(dialog_root)
    if not root.is_dir():
        raise DataError(
            f"CelebA-Dialog root {root} does not exist: pass --dialog-root DIR (the folder with {COMBINED_ANNOTATION})"
        )
    combined = next(
        (p for p in (root / COMBINED_ANNOTATION, root / "attributes" / COMBINED_ANNOTATION) if p.is_file()), None
    )
    if combined is not None:
        return read_annotation_file(combined, header=True), [combined]
    split_files = [root / name for name in SPLIT_ANNOTATIONS]
    if not all(p.is_file() for p in split_files):
        raise DataError(
            f"no {COMBINED_ANNOTATION} nor {', '.join(SPLIT_ANNOTATIONS)} in {root}: point --dialog-root at CelebA-Dialog"
        )
    labels: dict[str, tuple[int, ...]] = {}
    for path in split_files:
        for name, levels in read_annotation_file(path, header=False).items():
            if name in labels:
                raise DataError(f"{path}: {name} is also labelled in another split file: remove the duplicate")
            labels[name] = levels
    return labels, split_files


def _caption_text(entry) -> str:
    if not isinstance(entry, dict):
        return entry.strip() if isinstance(entry, str) else ""
    overall = entry.get("overall_caption")
    if isinstance(overall, str) and overall.strip():
        return overall.strip()
    parts = entry.get("attribute_wise_captions") or {}
    texts = [t.strip() for t in parts.values() if isinstance(t, str) and t.strip()] if isinstance(parts, dict) else []
    return " ".join(texts)


def find_captions(dialog_root: str | Path) -> list[Path]:
    """Every `captions.json` in the dialog root and its subfolders (up to CAPTION_SEARCH_DEPTH levels down).

    Hidden folders and image folders are not searched; links are followed, and two paths to the same file
    count once. Returns shallowest first. A tree too large to be a CelebA-Dialog download is an error.
    """
    root = Path(dialog_root)
    found: dict[str, Path] = {}
    for folders, (dirpath, dirnames, filenames) in enumerate(os.walk(root, followlinks=True), start=1):
        if folders > CAPTION_SEARCH_MAX_FOLDERS:
            raise DataError(
                f"stopped searching {root} for {CAPTIONS_FILE} after {CAPTION_SEARCH_MAX_FOLDERS} folders: "
                "pass --captions PATH (or a --dialog-root that is the CelebA-Dialog folder itself)"
            )
        here = Path(dirpath)
        if CAPTIONS_FILE in filenames and (here / CAPTIONS_FILE).is_file():
            found.setdefault(os.path.realpath(here / CAPTIONS_FILE), here / CAPTIONS_FILE)
        deeper = len(here.relative_to(root).parts) < CAPTION_SEARCH_DEPTH
        dirnames[:] = sorted(d for d in dirnames if deeper and not d.startswith(".") and d not in _CAPTION_SEARCH_SKIP)
    return sorted(found.values(), key=lambda p: (len(p.parts), str(p)))


def read_captions(path: str | Path) -> CaptionReport:
    """`captions.json`: {image: {"overall_caption": str, "attribute_wise_captions": {...}}}; nulls allowed.

    The overall caption is used; when it is null or empty, the attribute-wise captions are joined;
    when both are missing the image gets "" and is listed in `missing`. An unreadable file, invalid
    JSON or JSON of another shape is a `DataError` naming the file.
    """
    path = Path(path)
    fix = "restore CelebA-Dialog's original captions.json or pass --captions PATH to a good copy"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"{path} not found: pass --captions PATH to CelebA-Dialog's captions.json") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text ({e.reason}): {fix}") from None
    except OSError as e:
        raise DataError(f"{path} cannot be read ({e.strerror or e}): {fix}") from None
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: invalid JSON ({e.msg}): {fix}") from None
    except RecursionError:
        raise DataError(f"{path}: JSON nested too deeply to be a captions file: {fix}") from None
    if not isinstance(raw, dict):
        raise DataError(
            f"{path}: expected a JSON object mapping image names to captions, got a JSON {type(raw).__name__}: {fix}"
        )
    for name, entry in raw.items():
        if entry is not None and not isinstance(entry, str | dict):
            raise DataError(
                f"{path}: the entry for {name!r} is a JSON {type(entry).__name__}, expected an object with "
                f"{' / '.join(_CAPTION_KEYS)}: {fix}"
            )
    if raw and all(isinstance(e, dict) and not any(k in e for k in _CAPTION_KEYS) for e in raw.values()):
        raise DataError(
            f"{path}: no entry has {' or '.join(_CAPTION_KEYS)}, so it is not CelebA-Dialog's captions: {fix}"
        )
    captions, missing = {}, []
    for name, entry in raw.items():
        text = _caption_text(entry)
        captions[name] = text
        if not text:
            missing.append(name)
    return CaptionReport(captions, missing)
