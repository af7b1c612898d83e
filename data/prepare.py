"""Turn CelebA + CelebA-Dialog into a training-ready cache.

    python -m data.prepare --celeba-root DIR --dialog-root DIR --out DIR [--size 64]
                           [--captions PATH | --no-captions]

Each listed image is centre-cropped to a square and resized (Lanczos by default), on all cores,
into one memory-mapped uint8 array with its five levels, caption and split (see data/cache.py).
The split is CelebA's own partition restricted to the labelled images. The cache is written under a
temporary name and renamed at the end, so an interrupted run leaves nothing that looks complete.

Captions come from `--captions PATH`, else from the one `captions.json` found in the dialog root or its
subfolders; none found, several found, an invalid file, or a file that gives no image a caption is an
error unless `--no-captions` waives captions (every caption is then empty, and the manifest says so).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
from collections import Counter
from dataclasses import dataclass
from multiprocessing import Pool
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from data.cache import SPLITS, CacheWriter
from data.celeba import (
    CAPTION_SEARCH_DEPTH,
    CAPTIONS_FILE,
    IMAGE_DIR,
    PARTITION_FILE,
    find_captions,
    read_captions,
    read_dialog_annotations,
    read_partition,
)
from data.errors import DataError

RESAMPLE = {"lanczos": Image.Resampling.LANCZOS, "area": Image.Resampling.BOX, "bicubic": Image.Resampling.BICUBIC}


@dataclass(frozen=True)
class PrepareConfig:
    celeba_root: Path
    dialog_root: Path
    out: Path
    size: int = 64
    resample: str = "lanczos"
    skip_bad: bool = False
    workers: int = max(1, os.cpu_count() or 1)
    limit: int | None = None
    captions: Path | None = None  # CelebA-Dialog's captions.json; None: search the dialog root for it
    no_captions: bool = False  # build with every caption empty (recorded in the manifest)


def load_square(path: Path, size: int, resample: str) -> np.ndarray:
    """Decode, centre-crop to a square, resize to size x size RGB uint8."""
    with Image.open(path) as img:
        img.draft("RGB", (size * 2, size * 2))  # JPEG: decode at a reduced scale when that is still >= 2x
        img = img.convert("RGB")
        w, h = img.size
        s = min(w, h)
        left, top = (w - s) // 2, (h - s) // 2
        img = img.crop((left, top, left + s, top + s)).resize((size, size), RESAMPLE[resample])
        return np.asarray(img, dtype=np.uint8)


def _load_task(task: tuple[int, str, int, str]) -> tuple[int, np.ndarray | None, str | None]:
    i, path, size, resample = task
    try:
        return i, load_square(Path(path), size, resample), None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        return i, None, f"{type(e).__name__}: {e}"


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def resolve_captions(cfg: PrepareConfig) -> tuple[Path | None, str | None]:
    """The captions file to read and how it was chosen ("--captions" or "search"); (None, None) when waived."""
    if cfg.no_captions:
        if cfg.captions is not None:
            raise DataError(f"--captions {cfg.captions} and --no-captions contradict each other: pass only one")
        return None, None
    if cfg.captions is not None:
        if not cfg.captions.exists():
            raise DataError(
                f"--captions {cfg.captions} does not exist: pass the path of CelebA-Dialog's {CAPTIONS_FILE}"
            )
        if not cfg.captions.is_file():
            raise DataError(
                f"--captions {cfg.captions} is not a file: pass the path of CelebA-Dialog's {CAPTIONS_FILE}"
            )
        return cfg.captions, "--captions"
    found = find_captions(cfg.dialog_root)
    if not found:
        raise DataError(
            f"no {CAPTIONS_FILE} in {cfg.dialog_root} or its subfolders ({CAPTION_SEARCH_DEPTH} levels searched): "
            "pass --captions PATH, or --no-captions to build a cache whose captions are all empty "
            "(the SD+LoRA family then trains without text)"
        )
    if len(found) > 1:
        raise DataError(
            f"{len(found)} {CAPTIONS_FILE} files under {cfg.dialog_root}: {', '.join(map(str, found))}: "
            "pass --captions PATH to choose one"
        )
    return found[0], "search"


@dataclass(frozen=True)
class _Inputs:
    """What the sources say: the partition, the labels, the captions (empty when waived) and where each came from."""

    image_dir: Path
    partition_path: Path
    partition: dict[str, int]
    labels: dict[str, tuple[int, ...]]
    label_files: list[Path]
    caption_path: Path | None
    chosen_by: str | None
    captions: dict[str, str]
    missing_captions: list[str]
    captions_md5: str | None


@dataclass(frozen=True)
class _Selection:
    """The images to write, those skipped (name -> reason; corrupt ones are added while writing), the warnings."""

    names: list[str]
    skipped: dict[str, str]
    unlabelled: int
    warnings: list[str]


def _check_inputs(cfg: PrepareConfig) -> Path:
    """The image folder, once the roots, the size and the output are known to be usable."""
    if not cfg.celeba_root.is_dir():
        raise DataError(
            f"CelebA root {cfg.celeba_root} does not exist: pass --celeba-root DIR (the folder with {IMAGE_DIR}/)"
        )
    image_dir = cfg.celeba_root / IMAGE_DIR
    if not image_dir.is_dir():
        raise DataError(
            f"{image_dir} not found: --celeba-root must contain {IMAGE_DIR}/ (the aligned-and-cropped images)"
        )
    if cfg.size < 8:
        raise DataError(f"--size {cfg.size} is too small: use 8 or more (the study used 64)")
    if cfg.out.exists():
        raise DataError(f"output {cfg.out} already exists: choose another --out or delete it")
    return image_dir


def _read_inputs(cfg: PrepareConfig, log) -> _Inputs:
    """Check the inputs, then read the partition, the labels and the captions (saying which captions are used)."""
    image_dir = _check_inputs(cfg)
    partition_path = cfg.celeba_root / PARTITION_FILE
    partition = read_partition(partition_path)
    labels, label_files = read_dialog_annotations(cfg.dialog_root)
    caption_path, chosen_by = resolve_captions(cfg)
    if caption_path is None:
        captions, missing_captions, captions_md5 = {}, [], None
        log("captions: none (--no-captions): every caption will be empty")
    else:
        if chosen_by == "search":
            log(f"captions: using {caption_path} (the one {CAPTIONS_FILE} under {cfg.dialog_root})")
        report = read_captions(caption_path)
        captions, missing_captions, captions_md5 = report.captions, report.missing, _md5(caption_path)
    return _Inputs(
        image_dir,
        partition_path,
        partition,
        labels,
        label_files,
        caption_path,
        chosen_by,
        captions,
        missing_captions,
        captions_md5,
    )


def _select(cfg: PrepareConfig, inp: _Inputs) -> _Selection:
    """The labelled images of the partition that are present (up to --limit), and what is odd about the sources."""
    partition, labels, captions, caption_path = inp.partition, inp.labels, inp.captions, inp.caption_path
    unlabelled = sum(n not in labels for n in partition)
    names = sorted(n for n in partition if n in labels)
    if cfg.limit is not None:
        names = names[: cfg.limit]
    absent = [n for n in names if not (inp.image_dir / n).is_file()]
    if absent and not cfg.skip_bad:
        raise DataError(
            f"{inp.image_dir / absent[0]} is listed in {PARTITION_FILE} but absent ({len(absent)} missing in all): "
            "restore the images or pass --skip-bad"
        )
    skipped = {n: "absent" for n in absent}
    names = [n for n in names if n not in skipped]
    if caption_path is not None and names and not any(captions.get(n) for n in names):
        raise DataError(
            f"{caption_path}: none of the {len(names)} images has a non-empty caption "
            f"({len(captions)} entries, {sum(n in captions for n in names)} naming these images): "
            "pass --captions PATH to CelebA-Dialog's captions.json, or --no-captions to build without captions"
        )
    warnings: list[str] = []
    for msg, items in (
        ("labelled images not in the partition (ignored)", sorted(n for n in labels if n not in partition)),
        ("captions for unknown images (ignored)", sorted(n for n in captions if n not in partition)),
        ("images with null/empty captions", [n for n in inp.missing_captions if n in partition]),
        (f"images with no entry in {caption_path}", [n for n in names if caption_path and n not in captions]),
    ):
        if items:
            warnings.append(f"{len(items)} {msg}, e.g. {items[0]}")
    return _Selection(names, skipped, unlabelled, warnings)


def _write_images(cfg: PrepareConfig, inp: _Inputs, sel: _Selection, writer: CacheWriter, log) -> int:
    """Decode and resize the selected images on all workers into the writer; returns how many were kept."""
    names = sel.names
    tasks = [(i, str(inp.image_dir / n), cfg.size, cfg.resample) for i, n in enumerate(names)]
    kept = 0
    with Pool(cfg.workers) as pool:
        results = pool.imap(_load_task, tasks, chunksize=64)
        for i, image, error in tqdm(results, total=len(tasks), desc="prepare", unit="img", disable=not tasks):
            name = names[i]
            if error is not None:
                if not cfg.skip_bad:
                    raise DataError(
                        f"{inp.image_dir / name} is not a readable image ({error}): replace it or pass --skip-bad"
                    )
                sel.skipped[name] = f"corrupt ({error})"
                log(f"skipped {inp.image_dir / name}: {error}")
                continue
            writer.put(kept, image, inp.labels[name], inp.partition[name], name, inp.captions.get(name, ""))
            kept += 1
    return kept


def _write_cache(cfg: PrepareConfig, inp: _Inputs, sel: _Selection, log) -> tuple[int, dict, dict]:
    """Write the cache and its manifest; returns the images kept, the summary and the captions' record."""
    caption_path = inp.caption_path
    with CacheWriter(cfg.out, len(sel.names), cfg.size) as writer:
        kept = _write_images(cfg, inp, sel, writer, log)
        if kept == 0:
            raise DataError(f"no usable images under {inp.image_dir}: check --celeba-root and --dialog-root")
        writer.truncate(kept)
        counts = {s: int((writer.split == code).sum()) for s, code in SPLITS.items()}
        captioned = np.array([bool(c) for c in writer.captions])
        if caption_path is not None and not captioned.any():
            raise DataError(
                f"{caption_path}: none of the {kept} usable images has a non-empty caption (the captioned ones were "
                "skipped): restore those images, or pass --no-captions to build without captions"
            )
        captions_info = {
            "source": None if caption_path is None else str(caption_path.resolve()),
            "md5": inp.captions_md5,
            "chosen_by": inp.chosen_by,
            "waived": cfg.no_captions,
            "images": kept,
            "non_empty": int(captioned.sum()),
            "non_empty_per_split": {s: int((captioned & (writer.split == code)).sum()) for s, code in SPLITS.items()},
        }
        skipped = sel.skipped
        summary = {
            "counts": counts,
            "unlabelled": sel.unlabelled,
            "skipped": {"count": len(skipped), "reasons": dict(Counter(r.split(" ")[0] for r in skipped.values()))},
            "warnings": sel.warnings,
        }
        source = {
            "kind": "celeba-dialog",
            "celeba_root": str(cfg.celeba_root.resolve()),
            "dialog_root": str(cfg.dialog_root.resolve()),
            "resample": cfg.resample,
            "checksums_md5": {
                **{str(p.name): _md5(p) for p in [inp.partition_path, *inp.label_files]},
                **({caption_path.name: inp.captions_md5} if caption_path else {}),
            },
        }
        writer.finish(source, {"prepare_summary": summary, "captions": captions_info, "skipped_images": skipped})
    return kept, summary, captions_info


def _log_summary(
    cfg: PrepareConfig, caption_path: Path | None, kept: int, summary: dict, captions_info: dict, log
) -> None:
    counts = summary["counts"]
    log(
        f"wrote {cfg.out}: {kept} images at {cfg.size}x{cfg.size} — train {counts['train']}, val {counts['val']}, "
        f"test {counts['test']}; unlabelled (not used) {summary['unlabelled']}; skipped {summary['skipped']['count']}"
    )
    if caption_path is None:
        log(f"captions: none — waived with --no-captions, all {kept:,} captions are empty")
    else:
        log(
            f"captions: {captions_info['non_empty']:,} of {kept:,} images have a non-empty caption "
            f"(from {caption_path})"
        )


def prepare(cfg: PrepareConfig, log=print) -> dict:
    """Build the cache; returns the summary (also written into the manifest)."""
    inputs = _read_inputs(cfg, log)
    selection = _select(cfg, inputs)
    for w in selection.warnings:
        log(f"warning: {w}")
    kept, summary, captions_info = _write_cache(cfg, inputs, selection, log)
    _log_summary(cfg, inputs.caption_path, kept, summary, captions_info, log)
    return {**summary, "captions": captions_info}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m data.prepare", description=__doc__.split("\n\n")[0])
    p.add_argument("--celeba-root", type=Path, required=True, help=f"folder holding {IMAGE_DIR}/ and {PARTITION_FILE}")
    p.add_argument(
        "--dialog-root", type=Path, required=True, help="CelebA-Dialog folder (combined_annotation.txt, captions.json)"
    )
    p.add_argument("--out", type=Path, required=True, help="cache directory to create (must not exist)")
    p.add_argument("--size", type=int, default=64, help="output side in pixels (default 64, as in the study)")
    p.add_argument("--resample", choices=sorted(RESAMPLE), default="lanczos", help="resize filter (default lanczos)")
    p.add_argument(
        "--skip-bad", action="store_true", help="skip absent or corrupt images and report each, instead of stopping"
    )
    p.add_argument(
        "--workers", type=int, default=max(1, os.cpu_count() or 1), help="decoding processes (default: all cores)"
    )
    p.add_argument("--limit", type=int, default=None, help="only the first N labelled images (for quick trials)")
    p.add_argument(
        "--captions",
        type=Path,
        default=None,
        help=f"CelebA-Dialog's {CAPTIONS_FILE} (default: the one found in --dialog-root or its subfolders)",
    )
    p.add_argument(
        "--no-captions",
        action="store_true",
        help="build without captions (every caption empty; recorded in the manifest) instead of stopping",
    )
    a = p.parse_args(argv)
    if a.workers < 1:
        p.error("--workers must be >= 1")
    try:
        prepare(
            PrepareConfig(
                a.celeba_root,
                a.dialog_root,
                a.out,
                a.size,
                a.resample,
                a.skip_bad,
                a.workers,
                a.limit,
                captions=a.captions,
                no_captions=a.no_captions,
            )
        )
    except DataError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
