"""Train the attribute estimator: `python -m evaluation.train_estimator --data toy --out runs/estimator`.

The study's recipe (see evaluation/estimator.py): loss = mean of the five cross-entropies; Adam;
ReduceLROnPlateau (mode max, patience 5) on validation accuracy; phase 1 trains only the heads of a
pretrained backbone, phase 2 the whole network. Without pretrained weights phase 1 is skipped (a
random backbone is not worth freezing). The weights of the epoch with the best validation accuracy
are kept. Output directory: estimator.safetensors + config.json (loadable by AttributeEstimator.load),
report.json (per-attribute, mean and class-balanced accuracy on val and test, per-epoch history) and
one confusion-matrix PNG per attribute.

Speed options (EstimatorConfig's `mixed_precision`, `channels_last`, `compile`): "auto" trains in bf16 with
channels_last where the CPU has native bf16 -- unlike the diffusion engine, nothing here promises bit-level
equivalences, and the estimator came out as accurate -- and leaves compile off (its warm-up eats what it saves
in a training this short). The measurements: docs/measurements.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm

from data.cache import FaceCache
from data.dataset import FaceDataset, resolve_data
from data.errors import DataError
from data.io import atomic_dir
from data.schema import ATTRIBUTES, NUM_LEVELS
from evaluation.config import eval_device
from evaluation.confusion import plot_confusion
from evaluation.degrade import Degraded
from evaluation.errors import EvalError
from evaluation.estimator import (
    ESTIMATOR_PRESETS,
    AttributeEstimator,
    EstimatorConfig,
    build_estimator,
    estimator_preset,
)
from evaluation.metrics.accuracy import EstimatorAccuracy
from evaluation.metrics.base import EvalBatch
from models.runtime import MIXED_PRECISIONS, allow_hub_downloads, configure_torch, use_bf16, use_channels_last


def speed_options(config: EstimatorConfig, device: torch.device) -> dict:
    """The training speed options `config` resolves to on `device`: {"precision", "channels_last", "compile"}."""
    bf16 = use_bf16(config.mixed_precision, device, "estimator")
    return {"precision": "bf16" if bf16 else "fp32",
            "channels_last": use_channels_last(config.channels_last, device, "estimator"),
            "compile": config.compile}


def training_step(forward, batch: dict, optimizer: torch.optim.Optimizer, device: torch.device,
                  options: dict) -> float:
    """One optimizer step on a batch of the face dataset; returns the loss (the mean of the five cross-entropies)."""
    pixels = (batch["image"].to(device) + 1) / 2
    if options["channels_last"]:
        pixels = pixels.contiguous(memory_format=torch.channels_last)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=options["precision"] == "bf16"):
        logits = forward(pixels)
    # equal batch size per attribute, so the mean over B*5 entries is the mean of the 5 CEs
    loss = F.cross_entropy(logits.float().reshape(-1, NUM_LEVELS), batch["levels"].to(device).reshape(-1))
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.item()


@torch.no_grad()
def evaluate(model: AttributeEstimator, cache: FaceCache, split: str, batch_size: int = 256,
             limit: int | None = None) -> tuple[dict[str, float], np.ndarray]:
    """Accuracy figures (est_acc, est_acc_balanced, est_acc_<attr>) on a split, and the (5, 6, 6) confusion matrices."""
    model.eval()
    device = next(model.parameters()).device
    metric = EstimatorAccuracy(model)
    idx = cache.indices(split)[:limit]
    for i in range(0, len(idx), batch_size):
        rows = idx[i : i + batch_size]
        images = torch.from_numpy(np.asarray(cache.images[rows])).permute(0, 3, 1, 2).to(device)
        metric.update(EvalBatch(images=images, levels=torch.from_numpy(cache.levels[rows])))
    outcome = metric.compute(metric.state())
    confmats = np.stack([m.confmat.cpu().numpy() for m in metric.confmats])
    return outcome.values, confmats


def train_estimator(cache: FaceCache | str | Path, config: EstimatorConfig, out: str | Path,
                    progress: bool = True, hub_download: bool = False, log=print,
                    device: str | torch.device = "auto") -> dict:
    """Train on the cache's train split, select on val, report on val and test; write everything to `out`.

    `device`: "auto" (the visible GPU, else the CPU), "cpu", "cuda[:N]", resolved by `eval_device`."""
    device = eval_device(device)
    if config.mixed_precision not in MIXED_PRECISIONS:
        raise EvalError(f"estimator mixed_precision must be auto, bf16 or no, got {config.mixed_precision!r}")
    cache = cache if isinstance(cache, FaceCache) else FaceCache.open(cache)
    torch.manual_seed(config.seed)
    train = FaceDataset(cache, "train", augment=config.augment, limit=config.train_limit)
    if config.degrade > 0:
        train = Degraded(train, config.degrade, config.seed)
    if len(cache.indices("val")) == 0:
        raise EvalError(f"cache {cache.root} has no validation split: the estimator selects its epoch on val")
    loader = DataLoader(train, batch_size=config.batch_size, shuffle=True, drop_last=len(train) > config.batch_size,
                        generator=torch.Generator().manual_seed(config.seed))
    model, note = build_estimator(config, hub_download)
    model.to(device)
    options = speed_options(config, device)
    if options["channels_last"]:
        model.to(memory_format=torch.channels_last)
    forward = torch.compile(model) if options["compile"] else model
    pretrained = note.startswith("backbone initialised from")
    log(f"estimator {config.preset}: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, "
        f"{len(train)} training images at {cache.size}px -> {config.input_size}px; {note}; training in "
        f"{options['precision']}, channels_last {'on' if options['channels_last'] else 'off'}, "
        f"torch.compile {'on' if options['compile'] else 'off'}")

    phases = [("full", config.full_epochs, config.full_lr)]
    if pretrained and config.heads_epochs > 0:
        phases.insert(0, ("heads", config.heads_epochs, config.heads_lr))
    if sum(epochs for _, epochs, _ in phases) == 0:
        raise EvalError("no epochs to train (phase 1 only runs on a pretrained backbone): set --epochs >= 1")
    history, best_acc, best_state, t0 = [], -1.0, None, time.time()
    for phase, epochs, lr in phases:
        model.backbone.requires_grad_(phase == "full")
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.Adam(params, lr=lr)
        plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="max", patience=config.patience)
        for epoch in range(epochs):
            model.train()
            if phase == "heads":
                model.backbone.eval()  # a frozen backbone keeps its BatchNorm statistics too
            t_epoch, losses = time.time(), []
            for batch in tqdm(loader, desc=f"{phase} {epoch + 1}/{epochs}", leave=False, disable=not progress):
                losses.append(training_step(forward, batch, opt, device, options))
            val, _ = evaluate(model, cache, "val")
            plateau.step(val["est_acc"])
            row = {"phase": phase, "epoch": epoch + 1, "loss": float(np.mean(losses)), "val_acc": val["est_acc"],
                   "val_acc_balanced": val["est_acc_balanced"], "lr": lr, "seconds": time.time() - t_epoch}
            lr = opt.param_groups[0]["lr"]
            history.append(row)
            log(f"{phase} epoch {epoch + 1}/{epochs}: loss {row['loss']:.4f}  val acc {row['val_acc']:.4f}  "
                f"balanced {row['val_acc_balanced']:.4f}  ({row['seconds']:.1f}s)")
            if val["est_acc"] > best_acc:
                best_acc = val["est_acc"]
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    model.load_state_dict(best_state)
    train_seconds = time.time() - t0

    model.to(memory_format=torch.contiguous_format)
    report = {"preset": config.preset, "note": note, "data": str(cache.root), "image_size": cache.size,
              "train_images": len(train), "train_seconds": train_seconds, "speed_options": options,
              "history": history}
    with atomic_dir(out) as tmp:
        for split in ("val", "test"):
            if len(cache.indices(split)):
                values, confmats = evaluate(model, cache, split)
                report[split] = values
                if split == "val":
                    for attr, cm in zip(ATTRIBUTES, confmats):
                        plot_confusion(cm, attr, tmp / f"confusion_{attr}.png")
                    report["val_confusion"] = {a: cm.tolist() for a, cm in zip(ATTRIBUTES, confmats)}
        model.write(tmp, extra={"note": note, "val_acc": report["val"]["est_acc"]})
        (tmp / "report.json").write_text(json.dumps(report, indent=2))
    return report


def format_report(report: dict) -> str:
    lines = [f"{'split':<6} {'mean':>7} {'balanced':>9} " + " ".join(f"{a:>10}" for a in ATTRIBUTES)]
    for split in ("val", "test"):
        if split in report:
            v = report[split]
            lines.append(f"{split:<6} {v['est_acc']:>7.4f} {v['est_acc_balanced']:>9.4f} "
                         + " ".join(f"{v[f'est_acc_{a}']:>10.4f}" for a in ATTRIBUTES))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m evaluation.train_estimator", description=__doc__.split("\n")[0])
    p.add_argument("--data", default="toy", help="image cache directory, or 'toy' for the embedded synthetic faces")
    p.add_argument("--size", type=int, default=None, help="image size of the toy data (default: the toy default)")
    p.add_argument("--preset", default="small", choices=sorted(ESTIMATOR_PRESETS), help="estimator preset")
    p.add_argument("--out", required=True, help="output directory (must not exist unless --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out directory")
    p.add_argument("--epochs", type=int, default=None, help="phase-2 (whole network) epochs")
    p.add_argument("--heads-epochs", type=int, default=None, help="phase-1 (heads only) epochs, pretrained only")
    p.add_argument("--lr", type=float, default=None, help="phase-2 learning rate")
    p.add_argument("--batch-size", type=int, default=None, help="training batch size")
    p.add_argument("--augment", default=None, help="augmentation: none | study | study-no-color")
    p.add_argument("--degrade", type=float, default=None, help="probability of a blur/resize/noise per image")
    p.add_argument("--patience", type=int, default=None, help="ReduceLROnPlateau patience (epochs)")
    p.add_argument("--train-limit", type=int, default=None, help="use only the first N training images")
    p.add_argument("--pretrained", default=None, help="backbone weights: Hub id or local dir, 'none' for scratch")
    p.add_argument("--hub-download", action="store_true", help="allow downloading pretrained weights from the Hub")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--device", default="auto", help="training device: auto | cpu | cuda | cuda:N")
    p.add_argument("--seed", type=int, default=None, help="random seed")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--mixed-precision", default=None, choices=MIXED_PRECISIONS,
                   help="training autocast (default: the preset's, auto = bf16 on GPUs with native bf16, on CPUs per models.runtime.CPU_AUTO)")
    p.add_argument("--channels-last", default=None, choices=("auto", "on", "off"),
                   help="channels_last memory format while training (default: the preset's)")
    p.add_argument("--compile", action="store_true", help="torch.compile the training forward")
    args = p.parse_args(argv)
    if args.hub_download:
        allow_hub_downloads()
    overrides = {k: v for k, v in {
        "full_epochs": args.epochs, "heads_epochs": args.heads_epochs, "full_lr": args.lr,
        "batch_size": args.batch_size, "augment": args.augment, "train_limit": args.train_limit, "seed": args.seed,
        "degrade": args.degrade, "patience": args.patience, "mixed_precision": args.mixed_precision,
        "compile": args.compile or None,
    }.items() if v is not None}
    if args.channels_last is not None:
        overrides["channels_last"] = {"auto": None, "on": True, "off": False}[args.channels_last]
    if args.pretrained is not None:
        overrides["pretrained"] = None if args.pretrained.lower() == "none" else args.pretrained
    try:
        for name in ("full_epochs", "heads_epochs", "batch_size", "train_limit", "patience"):
            if name in overrides and overrides[name] < (1 if name in ("batch_size", "train_limit") else 0):
                raise EvalError(f"--{name.replace('_', '-')} must be positive, got {overrides[name]}")
        if not 0 <= overrides.get("degrade", 0) <= 1:
            raise EvalError(f"--degrade is a probability in [0, 1], got {overrides['degrade']}")
        config = estimator_preset(args.preset, **overrides)
        out = Path(args.out)
        if out.exists() and not args.overwrite:
            raise EvalError(f"output {out} already exists: choose another --out or pass --overwrite")
        device = eval_device(args.device)  # a bad --device fails before any data is built
        configure_torch(args.threads)
        cache = resolve_data(args.data, args.size)
        report = train_estimator(cache, config, out, progress=not args.quiet, hub_download=args.hub_download,
                                 device=device)
    except (EvalError, DataError, ValueError) as err:
        sys.exit(f"error: {err}")
    print(format_report(report))
    print(f"trained in {report['train_seconds']:.0f}s; wrote {out}/ (estimator.safetensors, report.json, "
          f"confusion_<attribute>.png)")


if __name__ == "__main__":
    main()
