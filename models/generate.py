"""Draw faces with a trained model: `python -m models.generate --model URI_OR_DIR ... --out FILE.png`.

    python -m models.generate --model models:/condface-ddpm@champion --smiling 5 --eyeglasses 0 -n 16 --out faces.png
    python -m models.generate --model models:/condface-sd-lora/1 --caption "A woman with big bangs." --out lora.png
    python -m models.generate --model runs:/<final run id>/model --out faces.png
    python -m models.generate --model ray_results/.../pipeline --age 5 --out old.png     # a save_pretrained folder

--model: a models:/ URI (`@alias` or `/version`), a runs:/ URI, or a local folder (a family's save_pretrained
folder or an MLflow model), for any family. MLflow URIs are downloaded with
`mlflow.artifacts.download_artifacts` from --tracking-uri, else $MLFLOW_TRACKING_URI, else
sqlite:///./mlruns.db (the sweep's embedded store).

Attributes: --bangs/--eyeglasses/--beard/--smiling/--age take a level 0..5. One left out means "any":
its level is drawn for each image from the training data's level frequencies, which an MLflow model
that the sweep registered carries; for a plain folder (no frequencies saved) it is drawn uniformly.
(Not "unconditional for that attribute": the model only ever saw the all-zero condition as a whole.)
Text-conditioned families (sd-lora, pixel-text, if-lora): the levels become captions in the training captions'
style, or --caption gives the prompt itself (with no attribute flags). The DDPM takes no caption.

Writes a grid with each face's levels (or the caption) under it and the settings on top; shows
sampling progress. Bad input exits non-zero with a one-line `error: ...`.
"""

from __future__ import annotations

import argparse
import os
import sys
import textwrap
from pathlib import Path

import numpy as np

from data.catalogue import default_tracking_uri, text_conditioned
from data.cli import Parser, first_line
from data.schema import ATTRIBUTES, NUM_LEVELS
from models.errors import ConfigError
from models.runtime import MIXED_PRECISIONS
from models.schedulers import SAMPLERS

MLFLOW_SCHEMES = ("models:", "runs:", "mlflow-artifacts:")


class _Parser(Parser):
    """The project's one-line parser, naming the attribute options when an option is unknown."""

    def error(self, message: str):
        if message.startswith("unrecognized arguments:"):
            flag = message.split(":", 1)[1].split()[0]
            message = f"unknown option {flag}: the attributes are --{', --'.join(ATTRIBUTES)}"
        super().error(message)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m models.generate",
                description="Draw faces with a trained condface model (any family: ddpm, sd-lora, pixel-text, if-lora) and write a labelled grid.",
                formatter_class=argparse.RawDescriptionHelpFormatter,
                epilog="An attribute left out means 'any': drawn per image from the training data's level "
                       "frequencies (carried by MLflow models the sweep registered), else uniformly.")
    p.add_argument("--model", required=True, help="models:/NAME@ALIAS, models:/NAME/VERSION, runs:/RUN_ID/PATH, or a "
                                                  "local folder (save_pretrained folder or MLflow model)")
    for a in ATTRIBUTES:
        p.add_argument(f"--{a}", type=str, default=None, metavar="0..5", help=f"{a} level (default: any)")
    p.add_argument("--caption", help="text families only (sd-lora, pixel-text, if-lora): the prompt for every image (instead of attribute levels)")
    p.add_argument("-n", "--num-images", type=int, default=16, help="how many faces (default 16)")
    p.add_argument("--guidance", type=float, default=None, help="guidance scale (default: the model's, else 3)")
    p.add_argument("--sampler", choices=list(SAMPLERS), default=None, help="default: the model's, else dpm++")
    p.add_argument("--steps", type=int, default=None, help="sampling steps, 0 = the whole chain (default: the "
                                                           "model's, else 25)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--precision", choices=list(MIXED_PRECISIONS), default=None,
                   help="the denoiser in bf16 autocast or fp32 (default: the model's, else no = fp32)")
    p.add_argument("--out", required=True, help="the PNG to write")
    p.add_argument("--tracking-uri", default=None, help="MLflow store for models:/ and runs:/ URIs (default: "
                                                        "$MLFLOW_TRACKING_URI, else sqlite:///./mlruns.db)")
    return p


def tracking_uri(arg: str | None) -> str:
    return arg or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri()


def fetch(model: str, uri: str) -> Path:
    """A local folder for --model: itself, or the MLflow artifacts it names, downloaded."""
    if not model.startswith(MLFLOW_SCHEMES):
        path = Path(model)
        if not path.is_dir():
            raise ConfigError(f"no model at {model}: give a local folder, or a models:/ or runs:/ URI")
        return path
    from models.mlflow_model import download

    return download(model, uri)


def parse_levels(args: argparse.Namespace) -> dict[str, int]:
    given = {}
    for a in ATTRIBUTES:
        raw = getattr(args, a)
        if raw is None:
            continue
        try:
            level = int(raw)
        except ValueError:
            raise ConfigError(f"--{a} must be a level 0..{NUM_LEVELS - 1}, got {raw!r}") from None
        if not 0 <= level < NUM_LEVELS:
            raise ConfigError(f"--{a} must be a level 0..{NUM_LEVELS - 1}, got {level}")
        given[a] = level
    return given


def level_label(row) -> str:
    """A face's levels on three short lines, e.g. "bangs 3  eyeglasses 0 / beard 0  smiling 5 / age 2"."""
    b, e, d, s, a = (int(v) for v in row)
    return f"bangs {b}  eyeglasses {e}\nbeard {d}  smiling {s}\nage {a}"


def labelled_grid(images: np.ndarray, labels: list[str], header: str, ncols: int):
    """Tiles (enlarged to at least 128 px) with a label under each and a header line on top."""
    from PIL import Image, ImageDraw

    n, h, w, _ = images.shape
    scale = max(1, -(-128 // w))
    tw, th = w * scale, h * scale
    wrapped = [[w for line in lb.split("\n") for w in textwrap.wrap(line, width=max(8, tw // 6))][:6] for lb in labels]
    label_h = 12 * max((len(w) for w in wrapped), default=0) + 4
    header_lines = textwrap.wrap(header, width=max(40, (ncols * tw) // 6))
    top = 12 * len(header_lines) + 6
    nrows = -(-n // ncols)
    canvas = Image.new("RGB", (ncols * tw, top + nrows * (th + label_h)), "white")
    draw = ImageDraw.Draw(canvas)
    for i, line in enumerate(header_lines):
        draw.text((4, 3 + 12 * i), line, fill="black")
    for i, (img, lines) in enumerate(zip(images, wrapped)):
        r, c = divmod(i, ncols)
        x, y = c * tw, top + r * (th + label_h)
        canvas.paste(Image.fromarray(img).resize((tw, th), Image.NEAREST), (x, y))
        for j, line in enumerate(lines):
            draw.text((x + 2, y + th + 2 + 12 * j), line, fill="black")
    return canvas


def run(args: argparse.Namespace) -> Path:
    from data.synthetic_captions import level_captions
    from models.mlflow_model import draw_levels, load_resolved, resolve_folder
    from models.runtime import configure_torch
    from models.sampling import generate, save_png

    if args.num_images < 1:
        raise ConfigError(f"-n must be at least 1, got {args.num_images}")
    if args.steps is not None and args.steps < 0:
        raise ConfigError(f"--steps must be 0 (the whole chain) or more, got {args.steps}")
    given = parse_levels(args)
    uri = tracking_uri(args.tracking_uri)
    model = resolve_folder(fetch(args.model, uri))
    if args.caption is not None and not text_conditioned(model.family):
        raise ConfigError(f"--caption is for the text-conditioned families: this {model.family} model is conditioned "
                          f"on attribute levels (--{', --'.join(ATTRIBUTES)})")
    if args.caption is not None and given:
        raise ConfigError("give either --caption or attribute levels, not both")
    defaults = model.info.get("defaults", {})
    guidance = args.guidance if args.guidance is not None else float(defaults.get("guidance_scale", 3.0))
    sampler = args.sampler or defaults.get("sampler", "dpm++")
    steps = args.steps if args.steps is not None else int(defaults.get("num_inference_steps", 25))
    ddpm_variance = model.info.get("ddpm_variance", "fixed_small")
    precision = args.precision or defaults.get("precision", "no")
    configure_torch(0)
    print(f"{model.family} model from {args.model} ({model.flavor}); {args.num_images} images, guidance "
          f"{guidance:g}, {sampler}, {'the whole chain' if steps == 0 else f'{steps} steps'}, seed {args.seed}, "
          f"precision {precision}",
          file=sys.stderr, flush=True)
    pipe = load_resolved(model, sampler=sampler, ddpm_variance=ddpm_variance)
    n = args.num_images
    if args.caption is not None:
        levels, captions = None, [args.caption] * n
        labels = [f"#{i}" for i in range(n)]
    else:
        freq = model.info.get("level_frequencies")
        levels = draw_levels(given, n, freq, np.random.default_rng(args.seed))
        captions = level_captions(levels, args.seed) if text_conditioned(model.family) else None
        labels = [level_label(row) for row in levels]
    images = generate(pipe, levels, captions, guidance, steps, args.seed, sampler, progress=True,
                      ddpm_variance=ddpm_variance, precision=precision)
    set_part = ", ".join(f"{a}={v}" for a, v in given.items()) or "none (all 'any')"
    any_part = [a for a in ATTRIBUTES if a not in given]
    header = (f"{args.model} ({model.family}) | guidance {guidance:g}, {sampler}, "
              f"{'T' if steps == 0 else steps} steps, seed {args.seed} | ")
    if args.caption is not None:
        header += f"caption: {args.caption}"
    else:
        header += f"set: {set_part}" + (f"; any ({'data frequencies' if model.info.get('level_frequencies') else 'uniform'}"
                                         f"): {', '.join(any_part)}" if any_part else "")
    ncols = 4 if n <= 16 else 8
    out = save_png(labelled_grid(images, labels, header, min(ncols, n)), args.out)
    print(f"wrote {out} ({n} faces)", file=sys.stderr, flush=True)
    return out


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except (ConfigError, ValueError) as err:
        raise SystemExit(f"error: {first_line(err)}") from None
    except OSError as err:
        raise SystemExit(f"error: {err}") from None


if __name__ == "__main__":
    main()
