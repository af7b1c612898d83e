"""Procedural face drawing for the embedded synthetic dataset.

A face is drawn from its five attribute levels (schema order: bangs, eyeglasses, beard, smiling,
age) and a `Look` (the nuisance factors: gender, skin, hair, background, clothes, pose). Shapes are
designed on a 64 x 64 unit square, drawn at 2x-8x the output resolution with anti-aliased OpenCV
primitives on a transparent layer, warped by the pose, area-downsampled and laid over the
background. Feature sizes and contrasts are chosen so the levels stay apart at 16 x 16 pixels.

This module imports only numpy, OpenCV and the caption templates, so worker processes start fast.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from data.synthetic_captions import caption

UNITS = 64.0  # design square
PAD = 12.0  # units drawn around the square so a shifted or shrunken face never shows a cut edge
_SHIFT = 4  # OpenCV fixed-point bits for sub-pixel coordinates
_ONE = 1 << _SHIFT

SKIN_TONES = np.array(
    [(247, 217, 196), (238, 198, 168), (224, 178, 140), (198, 145, 106), (160, 110, 76), (118, 80, 55), (88, 58, 40)],
    dtype=np.float64,
)
HAIR_COLOURS = np.array(
    [(22, 18, 16), (48, 32, 22), (88, 58, 36), (128, 62, 34), (160, 118, 70), (214, 180, 112)], dtype=np.float64
)
FRAME_COLOURS = np.array([(18, 18, 22), (48, 28, 18), (20, 26, 60), (70, 20, 26)], dtype=np.float64)
IRIS_COLOURS = np.array([(60, 40, 25), (35, 25, 20), (60, 95, 130), (80, 100, 60)], dtype=np.float64)

# Per-level tables (index = level 0..5), tuned by eye on 64 px and 16 px grids.
BANGS_DEPTH = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)  # fraction of the forehead (hairline -> below the brows) covered
GREY = (0.0, 0.0, 0.28, 0.52, 0.75, 1.0)  # hair greyness by age level
WRINKLE = (0.0, 0.0, 0.35, 0.55, 0.8, 1.0)  # wrinkle darkness by age level
MOUTH_WIDTH = (0.38, 0.58, 0.78, 0.84, 0.94, 1.04)  # mouth half-width as a fraction of the face half-width
MOUTH_LIFT = (-0.4, 1.5, 3.0, 2.6, 2.8, 3.0)  # units the mouth corners rise
MOUTH_OPEN = (0.0, 0.0, 0.0, 2.4, 4.2, 6.8)  # units the mouth opens
MOUTH_CLOSED_THICKNESS = (1.1, 1.8, 2.6)  # units, closed mouths (levels 0..2)
CHEEK_BLUSH = (0.0, 0.3, 0.42, 0.5, 0.55, 0.6)  # raised, flushed cheeks by smile level


@dataclass(frozen=True)
class Look:
    """Everything about a face that is not one of the five attributes."""

    male: bool
    skin: tuple[float, float, float]
    hair: tuple[float, float, float]
    iris: tuple[float, float, float]
    frame: tuple[float, float, float]
    clothes: tuple[float, float, float]
    bg_from: tuple[float, float, float]
    bg_to: tuple[float, float, float]
    bg_angle: float  # radians, direction of the background gradient
    angle: float  # degrees of in-plane rotation
    scale: float
    dx: float  # units
    dy: float
    width: float  # face width multiplier
    eye_gap: float  # units added to the eye spacing
    hair_volume: float  # units of hair above the head


def _luma(rgb) -> float:
    r, g, b = rgb
    return 0.299 * r + 0.587 * g + 0.114 * b


def _mix(a, b, t: float) -> tuple[float, float, float]:
    return tuple(float(x) * (1.0 - t) + float(y) * t for x, y in zip(a, b))


def sample_look(rng: np.random.Generator, beard_level: int) -> Look:
    """Draw the nuisance factors of one face. A beard (level > 0) always makes the face a man's."""
    male = bool(beard_level > 0 or rng.random() < 0.3)
    i = rng.uniform(0, len(SKIN_TONES) - 1)
    lo = int(i)
    skin = _mix(SKIN_TONES[lo], SKIN_TONES[min(lo + 1, len(SKIN_TONES) - 1)], i - lo)
    # hair must stand out from the skin, or bangs and beards vanish at 16 px
    for _ in range(8):
        hair = HAIR_COLOURS[rng.integers(len(HAIR_COLOURS))] * rng.uniform(0.9, 1.1)
        if abs(_luma(hair) - _luma(skin)) > 70:
            break
    else:
        hair = HAIR_COLOURS[0] if _luma(skin) > 110 else HAIR_COLOURS[-1]
    hair = tuple(float(v) for v in np.clip(hair, 0, 255))
    bg_from = tuple(float(v) for v in rng.uniform(30, 235, 3))
    bg_to = tuple(float(v) for v in np.clip(np.asarray(bg_from) + rng.normal(0, 45, 3), 0, 255))
    return Look(
        male=male,
        skin=skin,
        hair=hair,
        iris=tuple(float(v) for v in IRIS_COLOURS[rng.integers(len(IRIS_COLOURS))]),
        frame=tuple(float(v) for v in FRAME_COLOURS[rng.integers(len(FRAME_COLOURS))]),
        clothes=tuple(float(v) for v in rng.uniform(20, 235, 3)),
        bg_from=bg_from,
        bg_to=bg_to,
        bg_angle=float(rng.uniform(0, 2 * np.pi)),
        angle=float(rng.uniform(-7, 7)),
        scale=float(rng.uniform(0.92, 1.06)),
        dx=float(rng.uniform(-3, 3)),
        dy=float(rng.uniform(-2.5, 2.5)),
        width=float(rng.uniform(0.95, 1.05)),
        eye_gap=float(rng.uniform(-0.6, 0.6)),
        hair_volume=float(rng.uniform(2.0, 4.0)),
    )


class _Layer:
    """A transparent RGBA layer with drawing helpers in design units (premultiplied by construction)."""

    def __init__(self, px_per_unit: float):
        self.s = px_per_unit
        side = int(round((UNITS + 2 * PAD) * px_per_unit))
        self.img = np.zeros((side, side, 4), np.uint8)

    def _pts(self, pts) -> np.ndarray:
        pts = (np.asarray(pts, np.float64) + PAD) * (self.s * _ONE)
        return np.rint(pts).astype(np.int32).reshape(-1, 1, 2)

    def _xy(self, x: float, y: float) -> tuple[int, int]:
        k = self.s * _ONE
        return int(round((x + PAD) * k)), int(round((y + PAD) * k))

    def _w(self, thickness: float) -> int:
        return max(1, int(round(thickness * self.s)))

    @staticmethod
    def _c(rgb) -> tuple[int, int, int, int]:
        return (int(rgb[0]), int(rgb[1]), int(rgb[2]), 255)

    def fill(self, pts, rgb) -> None:
        cv2.fillPoly(self.img, [self._pts(pts)], self._c(rgb), cv2.LINE_AA, _SHIFT)

    def line(self, pts, rgb, thickness: float, closed: bool = False) -> None:
        cv2.polylines(self.img, [self._pts(pts)], closed, self._c(rgb), self._w(thickness), cv2.LINE_AA, _SHIFT)

    def ellipse(self, centre, axes, rgb, angle: float = 0.0, start: float = 0.0, end: float = 360.0,
                thickness: float = -1) -> None:
        c = self._xy(*centre)
        ax = (max(1, int(round(axes[0] * self.s * _ONE))), max(1, int(round(axes[1] * self.s * _ONE))))
        w = -1 if thickness < 0 else self._w(thickness)
        cv2.ellipse(self.img, c, ax, angle, start, end, self._c(rgb), w, cv2.LINE_AA, _SHIFT)

    def blend_rows(self, y0: float, y1: float, draw, alpha: float) -> None:
        """Draw with `draw(layer)` at opacity `alpha`, only touching rows y0..y1 (units)."""
        r0 = max(0, int((y0 + PAD) * self.s))
        r1 = min(self.img.shape[0], int((y1 + PAD) * self.s) + 1)
        before = self.img[r0:r1].copy()
        draw(self)
        cv2.addWeighted(self.img[r0:r1], alpha, before, 1.0 - alpha, 0.0, dst=self.img[r0:r1])


def _arc(cx, cy, ax, ay, t0, t1, n=24) -> np.ndarray:
    t = np.linspace(t0, t1, n)
    return np.stack([cx + ax * np.cos(t), cy + ay * np.sin(t)], 1)


def _superellipse(cx, cy, a, b, power=4.0, n=32) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    c, s = np.cos(t), np.sin(t)
    x = a * np.sign(c) * np.abs(c) ** (2 / power)
    y = b * np.sign(s) * np.abs(s) ** (2 / power)
    return np.stack([cx + x, cy + y], 1)


def _face_outline(cx, cy, w, h, chin, n=48) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    lower = np.clip(np.sin(t), 0, None)
    x = cx + w * np.cos(t) * (1 - chin * lower**2)
    return np.stack([x, cy + h * np.sin(t)], 1)


@dataclass(frozen=True)
class _Geometry:
    cx: float
    cy: float
    w: float
    h: float
    chin: float
    eye_y: float
    eye_dx: float
    eye_r: float
    brow_y: float
    nose_y: float
    mouth_y: float
    hairline: float  # y of the hairline at the centre


def _geometry(age: int, look: Look) -> _Geometry:
    if age == 0:  # child: small round face, big eyes set low, big forehead
        w, h, chin, cy = 15.5, 17.5, 0.10, 37.0
        eye_y, eye_r = cy + 0.05 * h, 3.3
    else:
        w, h = 16.8 + 0.4 * max(0, age - 3), 21.0
        chin = (0.30, 0.27, 0.23, 0.17, 0.10)[age - 1]  # the jaw widens (jowls) with age
        cy = 35.0
        eye_y, eye_r = cy - 0.08 * h, 2.8
    w *= look.width
    cx = 32.0
    return _Geometry(
        cx=cx, cy=cy, w=w, h=h, chin=chin, eye_y=eye_y, eye_dx=0.42 * w + look.eye_gap * 0.5, eye_r=eye_r,
        brow_y=eye_y - 4.6, nose_y=eye_y + 0.36 * h, mouth_y=cy + 0.52 * h, hairline=cy - 0.88 * h,
    )


def _hairline_curve(g: _Geometry, n=17) -> np.ndarray:
    """The hairline from the right temple over the forehead to the left temple."""
    x = np.linspace(g.cx + g.w * 0.98, g.cx - g.w * 0.98, n)
    u = np.clip((x - g.cx) / g.w, -1, 1)
    temple = g.cy - 0.3 * g.h
    y = temple - (temple - g.hairline) * np.sqrt(1 - u**2) ** 0.6
    return np.stack([x, y], 1)


def _draw_back(layer: _Layer, g: _Geometry, look: Look, hair) -> None:
    cx, cy, w, h = g.cx, g.cy, g.w, g.h
    layer.ellipse((cx, 64 + 8), (27, 17), look.clothes)  # shoulders
    if look.male:
        layer.ellipse((cx, cy - 0.15 * h), (w + 1.6, h * 0.85 + look.hair_volume), hair, start=180, end=360)
    else:  # long hair falling to the shoulders: the gender cue that survives at 16 px
        top = _arc(cx, cy - 0.1 * h, w + 3.2, h * 0.9 + look.hair_volume, np.pi, 2 * np.pi)
        sides = [(cx + w + 4.5, cy + h + 6), (cx + w + 2, cy + h + 10), (cx - w - 2, cy + h + 10),
                 (cx - w - 4.5, cy + h + 6)]
        layer.fill(np.concatenate([top, sides]), hair)
    neck = _mix(look.skin, (0, 0, 0), 0.12)
    layer.fill([(cx - 0.5 * w, cy + 0.5 * h), (cx + 0.5 * w, cy + 0.5 * h), (cx + 0.55 * w, 70), (cx - 0.55 * w, 70)],
               neck)
    for side in (-1, 1):
        layer.ellipse((cx + side * g.w * 0.98, g.eye_y + 3), (2.6, 4.4), neck)


def _draw_wrinkles(layer: _Layer, g: _Geometry, look: Look, age: int) -> None:
    k = WRINKLE[age]
    if k == 0:
        return
    col = _mix(look.skin, (40, 20, 10), 0.25 + 0.4 * k)
    cx = g.cx
    hw = g.w * 0.45
    for side in (-1, 1):  # nasolabial folds
        layer.line([(cx + side * 0.22 * g.w, g.nose_y - 2), (cx + side * (hw + 1.2), g.mouth_y - 1.5),
                    (cx + side * (hw + 1.6), g.mouth_y + 2)], col, 0.5 + 0.7 * k)
    forehead_lines = {3: 1, 4: 2, 5: 3}.get(age, 0)
    for j in range(forehead_lines):
        y = g.brow_y - 2.6 - 2.1 * j
        layer.line(_arc(cx, y + 3, g.w * 0.55, 3, np.pi * 1.2, np.pi * 1.8, 9), col, 0.6 + 0.5 * k)
    if age >= 4:
        for side in (-1, 1):
            ex = cx + side * g.eye_dx
            layer.line(_arc(ex, g.eye_y + 1.5, g.eye_r * 1.2, 2.0, 0.2 * np.pi, 0.8 * np.pi, 8), col, 0.6)  # bags
            if age == 5:  # marionette lines from the mouth corners
                layer.line([(cx + side * (hw + 0.8), g.mouth_y + 1.0), (cx + side * (hw - 0.2), g.cy + 0.86 * g.h)],
                           col, 0.9)
            for dy in (-1.3, 0.2, 1.7):  # crow's feet
                layer.line([(ex + side * (g.eye_r + 1.2), g.eye_y + dy * 0.6),
                            (ex + side * (g.eye_r + 3.2), g.eye_y + dy)], col, 0.5)


def _draw_beard(layer: _Layer, g: _Geometry, look: Look, beard: int, hair) -> None:
    if beard == 0:
        return
    cx, cy, w, h = g.cx, g.cy, g.w, g.h
    # push the beard away from the skin tone so stubble levels stay apart
    dark = _mix(hair, (0, 0, 0) if _luma(hair) < _luma(look.skin) else (255, 255, 255), 0.15)
    grow = {4: (0.6, 2.0), 5: (2.8, 9.0)}.get(beard, (0.0, 0.0))  # outward, below the chin
    t = np.linspace(0.12 * np.pi, 0.88 * np.pi, 21)
    lower = np.sin(t)
    outer_x = cx + (w + grow[0]) * np.cos(t) * (1 - g.chin * lower**2)
    outer_y = cy + h * np.sin(t) + grow[1] * lower**3
    if beard == 5:  # bushy, ragged edge
        outer_y = outer_y + 1.2 * (np.arange(len(t)) % 2) * lower
        outer_x = outer_x + 0.9 * (np.arange(len(t)) % 2) * np.cos(t)
    outer = np.stack([outer_x, outer_y], 1)
    top = g.mouth_y - 3.4
    inner = [(cx - 0.78 * w, cy + 0.2 * h), (cx - 0.42 * w, top + 0.4), (cx, top), (cx + 0.42 * w, top + 0.4),
             (cx + 0.78 * w, cy + 0.2 * h)]
    region = np.concatenate([outer, inner])
    if beard in (1, 2, 3):
        layer.fill(region, _mix(look.skin, dark, (0.38, 0.68, 0.3)[beard - 1]))
    else:
        layer.fill(region, dark)
    if beard == 3:  # goatee and moustache
        my, hw = g.mouth_y, 0.45 * w
        layer.fill([(cx - hw - 0.8, my + 0.3), (cx - hw * 0.7, top + 0.2), (cx, top - 0.3), (cx + hw * 0.7, top + 0.2),
                    (cx + hw + 0.8, my + 0.3), (cx + 0.38 * w, cy + h + 0.6), (cx - 0.38 * w, cy + h + 0.6)], dark)
    if beard >= 4:
        layer.fill([(cx - 0.55 * w, g.mouth_y + 0.5), (cx - 0.3 * w, top - 0.8), (cx, top - 1.2),
                    (cx + 0.3 * w, top - 0.8), (cx + 0.55 * w, g.mouth_y + 0.5)], _mix(dark, (0, 0, 0), 0.1))


def _draw_eyes(layer: _Layer, g: _Geometry, look: Look, smile: int, hair) -> None:
    brow = _mix(hair, (0, 0, 0), 0.35)
    line = (30, 20, 18)
    for side in (-1, 1):
        ex, ey, r = g.cx + side * g.eye_dx, g.eye_y, g.eye_r
        if smile == 5:  # laughing: eyes squeezed shut into arcs
            layer.line(_arc(ex, ey + 1.2, r * 1.2, 2.0, 1.15 * np.pi, 1.85 * np.pi, 9), line, 1.0)
        else:
            squint = (1.0, 1.0, 0.92, 0.82, 0.6)[smile]
            layer.ellipse((ex, ey), (r * 1.25, r * 0.75 * squint), (248, 248, 245))
            layer.ellipse((ex, ey), (r * 0.55, r * 0.55 * min(1.0, squint + 0.2)), look.iris)
            layer.ellipse((ex, ey), (r * 0.3, r * 0.3 * squint), (10, 10, 10))
            layer.ellipse((ex, ey), (r * 1.25, r * 0.75 * squint), line, start=180, end=360,
                          thickness=0.6 if look.male else 1.0)
        layer.line(_arc(ex, g.brow_y + 2.2, r * 1.45, 2.0, 1.15 * np.pi, 1.9 * np.pi, 9), brow,
                   1.7 if look.male else 1.2)


def _draw_nose(layer: _Layer, g: _Geometry, look: Look) -> None:
    col = _mix(look.skin, (50, 25, 15), 0.35)
    cx, ny = g.cx, g.nose_y
    layer.line([(cx + 0.6, g.eye_y + 2.5), (cx + 1.6, ny - 0.5), (cx + 0.4, ny + 0.6)], col, 0.6)
    layer.line(_arc(cx, ny - 0.3, 2.4, 1.0, 0.05 * np.pi, 0.95 * np.pi, 7), col, 0.7)


def _lip_colour(look: Look) -> tuple[float, float, float]:
    dark, rosy = (70, 12, 22), (222, 96, 112)  # whichever stands out more from the skin
    lip = dark if abs(_luma(look.skin) - _luma(dark)) >= abs(_luma(look.skin) - _luma(rosy)) else rosy
    return _mix(look.skin, lip, 0.8 if look.male else 0.95)


def _draw_mouth(layer: _Layer, g: _Geometry, look: Look, smile: int) -> None:
    cx, my = g.cx, g.mouth_y
    hw = MOUTH_WIDTH[smile] * g.w * 0.62
    lift, opening = MOUTH_LIFT[smile], MOUTH_OPEN[smile]
    lip = _lip_colour(look)
    if CHEEK_BLUSH[smile] > 0:  # smiling lifts and flushes the cheeks
        blush = _mix(look.skin, (236, 110, 120), CHEEK_BLUSH[smile])
        for side in (-1, 1):
            layer.ellipse((cx + side * 0.55 * g.w, g.nose_y - 0.3), (3.0, 2.1), blush)
    x = np.linspace(cx - hw, cx + hw, 15)
    u = (x - cx) / hw
    bulge = 1 - u**2
    upper = my - lift * u**2  # corners raised by `lift`
    if opening == 0:  # closed: a crescent that widens, curves and thickens with the level
        thick = MOUTH_CLOSED_THICKNESS[smile]
        top = upper - 0.35 * thick * bulge
        bottom = upper + 0.65 * thick * bulge + 0.5
        layer.fill(np.concatenate([np.stack([x, top], 1), np.stack([x, bottom], 1)[::-1]]), lip)
        if smile == 2:  # dimples
            for side in (-1, 1):
                layer.line([(cx + side * (hw + 0.4), my - lift - 1.0), (cx + side * (hw + 0.9), my - lift + 0.6)],
                           _mix(look.skin, (40, 20, 10), 0.45), 0.6)
        return
    lower = upper + opening * bulge
    outline = np.concatenate([np.stack([x, upper], 1), np.stack([x, lower], 1)[::-1]])
    layer.fill(outline, (70, 16, 22))
    teeth = upper + min(opening, 2.3) * np.sqrt(np.clip(bulge, 0, 1))
    layer.fill(np.concatenate([np.stack([x, upper], 1), np.stack([x, teeth], 1)[::-1]]), (250, 250, 246))
    layer.line(outline, lip, 0.9, closed=True)
    if smile >= 4:  # raised cheeks
        crease = _mix(look.skin, (40, 20, 10), 0.4)
        for side in (-1, 1):
            t0 = -0.5 * np.pi if side > 0 else 0.5 * np.pi
            layer.line(_arc(cx + side * (hw + 0.8), my - lift - 1.5, 1.6, 3.0, t0, t0 + np.pi, 7), crease, 0.6)


def _draw_front_hair(layer: _Layer, g: _Geometry, look: Look, bangs: int, hair) -> None:
    cx, cy, w, h = g.cx, g.cy, g.w, g.h
    hl = _hairline_curve(g)
    outer = _arc(cx, cy - 0.1 * h, w + (1.6 if look.male else 3.2), h * 0.9 + look.hair_volume,
                 np.pi + 0.28, 2 * np.pi - 0.28, 20)
    layer.fill(np.concatenate([outer, hl]), hair)
    depth = BANGS_DEPTH[bangs]
    if depth == 0:
        return
    # the fringe's lower edge moves from the hairline down to just below the brows
    bottom = g.brow_y + 2.3
    x = np.linspace(cx + w * 0.95, cx - w * 0.95, 25)
    u = np.clip((x - cx) / w, -1, 1)
    top_y = np.interp(x[::-1], hl[::-1, 0], hl[::-1, 1])[::-1]
    edge_y = top_y + depth * (bottom - top_y) * np.sqrt(1 - u**2) ** 0.25
    edge_y = edge_y + 0.9 * depth * (np.arange(len(x)) % 2)  # strands
    layer.fill(np.concatenate([np.stack([x, top_y], 1), np.stack([x, edge_y], 1)[::-1]]), hair)
    layer.fill(np.concatenate([np.stack([x, top_y - 2.0], 1), np.stack([x, top_y + 0.5], 1)[::-1]]), hair)


def _draw_glasses(layer: _Layer, g: _Geometry, look: Look, level: int) -> None:
    if level == 0:
        return
    scale = g.w / 16.0
    a, b = (5.6 * scale, 4.3 * scale) if level < 5 else (6.3 * scale, 4.9 * scale)
    ey = g.eye_y + 0.3
    frame = look.frame if level in (2, 3, 4) else (12, 12, 14)
    thick = {1: 0.5, 2: 0.9, 3: 2.4, 4: 0.9, 5: 2.6}[level]
    lenses = [_superellipse(g.cx + side * g.eye_dx, ey, a, b, 3.5 if level in (3, 5) else 2.6) for side in (-1, 1)]
    tint, alpha = {1: ((220, 238, 250), 0.42), 2: ((225, 235, 245), 0.12), 3: ((225, 235, 245), 0.12),
                   4: ((28, 30, 42), 0.85), 5: ((8, 8, 10), 1.0)}[level]

    def lens_fill(lay: _Layer) -> None:
        for pts in lenses:
            lay.fill(pts, tint)

    layer.blend_rows(ey - b - 1, ey + b + 1, lens_fill, alpha)
    rim = (165, 175, 185) if level == 1 else frame
    for side, pts in zip((-1, 1), lenses):
        layer.line(pts, rim, thick, closed=True)
        outer = g.cx + side * (g.eye_dx + a)
        layer.line([(outer, ey - b * 0.4), (g.cx + side * (g.w + 0.8), ey - b * 0.2)], rim, max(0.6, thick * 0.7))
    inner = g.eye_dx - a
    layer.line(_arc(g.cx, ey - 0.6, inner, 1.1, 1.05 * np.pi, 1.95 * np.pi, 7), rim, max(0.6, thick * 0.8))


def render_face(levels, look: Look, size: int) -> np.ndarray:
    """One face as uint8 (size, size, 3) RGB from its five levels and its look."""
    bangs, glasses, beard, smile, age = (int(v) for v in levels)
    render = max(128, 2 * size)  # draw at >= 2x and area-downsample
    layer = _Layer(render / UNITS)
    g = _geometry(age, look)
    silver = (200, 200, 205) if _luma(look.skin) < 150 else (150, 150, 155)
    if age == 5:  # white rather than grey
        silver = _mix(silver, (255, 255, 255), 0.4)
    hair = _mix(look.hair, silver, GREY[age])

    _draw_back(layer, g, look, hair)
    layer.fill(_face_outline(g.cx, g.cy, g.w, g.h, g.chin), look.skin)
    _draw_wrinkles(layer, g, look, age)
    _draw_beard(layer, g, look, beard, hair)
    _draw_nose(layer, g, look)
    _draw_eyes(layer, g, look, smile, hair)
    _draw_mouth(layer, g, look, smile)
    _draw_front_hair(layer, g, look, bangs, hair)
    _draw_glasses(layer, g, look, glasses)

    s = layer.s
    m = cv2.getRotationMatrix2D(((g.cx + PAD) * s, (g.cy + PAD) * s), look.angle, look.scale)
    m[:, 2] += ((look.dx - PAD) * s, (look.dy - PAD) * s)
    face = cv2.warpAffine(layer.img, m, (render, render), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    if render != size:
        face = cv2.resize(face, (size, size), interpolation=cv2.INTER_AREA)
    alpha = face[..., 3:4].astype(np.float32) * (1.0 / 255.0)
    out = _background(look, size) * (1.0 - alpha) + face[..., :3]
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


_GRIDS: dict[int, tuple[np.ndarray, np.ndarray]] = {}


def _background(look: Look, size: int) -> np.ndarray:
    if size not in _GRIDS:
        c = (np.arange(size, dtype=np.float32) + 0.5) / size - 0.5
        _GRIDS[size] = np.meshgrid(c, c)
    xx, yy = _GRIDS[size]
    t = np.clip(0.5 + xx * np.cos(look.bg_angle) + yy * np.sin(look.bg_angle), 0, 1)[..., None]
    start, end = np.asarray(look.bg_from, np.float32), np.asarray(look.bg_to, np.float32)
    return start + (end - start) * t


def face_rng(seed: int, index: int) -> np.random.Generator:
    """The generator for face `index` of a set drawn with `seed` (its look and caption wording)."""
    return np.random.default_rng([seed, index])


def draw_range(levels: np.ndarray, size: int, seed: int, start: int) -> tuple[np.ndarray, list[str]]:
    """Faces start .. start+len(levels)-1 of a set drawn with `seed`: images and captions.

    Face i depends only on (seed, i) and its levels, so chunks drawn apart join up exactly.
    """
    images = np.empty((len(levels), size, size, 3), np.uint8)
    captions = []
    for j, lv in enumerate(levels):
        rng = face_rng(seed, start + j)
        look = sample_look(rng, int(lv[2]))
        images[j] = render_face(lv, look, size)
        captions.append(caption(lv, look.male, rng))
    return images, captions
