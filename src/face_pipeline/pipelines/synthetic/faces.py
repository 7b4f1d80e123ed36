"""Procedural cartoon faces: one fixed geometry per identity, a new pose, light and expression per image.

Everything is drawn in a 112-unit frame laid out like insightface's aligned crops
(eyes near y=50, nose tip near y=72, mouth near y=88) and rendered at twice the
output size, so anti-aliased strokes stay smooth after the final downscale.

Colours come from small palettes shared by many identities, and every image gets
its own background, exposure and colour cast, so an identity can only be told
apart by the shape and placement of its features.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

FRAME = 112.0
_SUPERSAMPLE = 2
_SHIFT = 4  # fractional bits of cv2's fixed-point coordinates
_FIXED = 1 << _SHIFT
_AA = cv2.LINE_AA
_BYTE_PAIR_STD = float(np.sqrt(2 * (256**2 - 1) / 12))  # of the sum of two uniform random bytes


def _bgr(rgb_rows: list[tuple[int, int, int]]) -> np.ndarray:
    return np.array(rgb_rows, dtype=np.float64)[:, ::-1]


# Lightest to darkest skin tone is a factor of about 1.6 in brightness, less than
# the factor of 2 between a dim and a bright exposure, so a tone alone does not
# give an identity away.
SKIN_TONES = _bgr([(232, 190, 160), (214, 166, 132), (192, 140, 104), (168, 118, 86), (146, 100, 72)])
HAIR_COLOURS = _bgr([(28, 24, 22), (66, 44, 30), (112, 76, 44), (196, 160, 98), (150, 148, 142)])
IRIS_COLOURS = _bgr([(88, 56, 32), (42, 30, 24), (78, 116, 150), (84, 112, 76)])
_LIP_TINT = _bgr([(170, 70, 72)])[0]
_SCLERA = _bgr([(238, 236, 230)])[0]
_MOUTH_INSIDE = _bgr([(70, 22, 26)])[0]


@dataclass(frozen=True, slots=True)
class Identity:
    """The fixed geometry and palette choices of one person, in 112-unit frame coordinates."""

    face_cy: float
    face_rx: float
    face_ry: float
    squareness: float  # superellipse exponent: 2 is an oval, higher is boxier
    jaw_taper: float  # how much the lower face narrows towards the chin
    skin: int
    ear_dy: float
    ear_rx: float
    ear_ry: float
    eye_y: float
    eye_dx: float
    eye_rx: float
    eye_ry: float
    eye_tilt: float
    iris_r: float
    iris: int
    brow_gap: float
    brow_len: float
    brow_thick: float
    brow_arch: float
    brow_slant: float
    nose_len: float
    nose_width: float
    mouth_gap: float
    mouth_rx: float
    upper_lip: float
    lower_lip: float
    hair: int
    hair_volume: float
    hair_bottom: float
    hairline_depth: float
    hairline_bend: float
    parting: float
    moustache: float  # thickness, 0 for none
    beard: bool

    @property
    def face_top(self) -> float:
        return self.face_cy - self.face_ry

    @property
    def nose_tip_y(self) -> float:
        return self.eye_y + self.nose_len

    @property
    def mouth_y(self) -> float:
        return self.nose_tip_y + self.mouth_gap

    @property
    def brow_y(self) -> float:
        return self.eye_y - self.eye_ry - self.brow_gap


@dataclass(frozen=True, slots=True)
class Shot:
    """What changes from one photo of a person to the next."""

    angle: float  # degrees, in-plane
    scale: float
    shift_x: float
    shift_y: float
    background: tuple[float, float, float]
    clutter: tuple[tuple[float, ...], ...]  # background blobs: x, y, rx, ry, angle, b, g, r
    gain: float
    offset: float
    contrast: float
    light_slope: float  # exposure change across the image, as a fraction
    light_direction: float  # radians
    colour_cast: tuple[float, float, float]
    smile: float  # mouth corners up (positive) or down
    mouth_open: float
    brow_raise: float
    frown: float  # inner brow ends pulled down
    eye_open: float
    gaze_x: float
    gaze_y: float
    blur: float
    noise: float


def sample_identity(rng: np.random.Generator) -> Identity:
    u = rng.uniform
    eye_y = u(47, 54)
    return Identity(
        face_cy=u(57, 63),
        face_rx=u(33, 41),
        face_ry=u(45, 52),
        squareness=u(2.0, 3.4),
        jaw_taper=u(0.0, 0.3),
        skin=int(rng.integers(len(SKIN_TONES))),
        ear_dy=u(-1, 5),
        ear_rx=u(3.5, 5.5),
        ear_ry=u(7, 11),
        eye_y=eye_y,
        eye_dx=u(14.5, 19.5),
        eye_rx=u(5.8, 8.4),
        eye_ry=u(2.6, 4.0),
        eye_tilt=u(-9, 9),
        iris_r=u(2.3, 3.3),
        iris=int(rng.integers(len(IRIS_COLOURS))),
        brow_gap=u(5, 9),
        brow_len=u(10, 16),
        brow_thick=u(1.6, 3.8),
        brow_arch=u(-0.5, 3.5),
        brow_slant=u(-2.5, 2.5),
        nose_len=u(16, 24),
        nose_width=u(4, 7.5),
        mouth_gap=u(10, 16),
        mouth_rx=u(8.5, 14),
        upper_lip=u(1.2, 2.8),
        lower_lip=u(1.6, 3.8),
        hair=int(rng.integers(len(HAIR_COLOURS))),
        hair_volume=u(1, 8),
        hair_bottom=u(eye_y - 6, 125),
        hairline_depth=u(6, 22),
        hairline_bend=u(-4, 10),
        parting=u(-14, 14),
        moustache=u(1.5, 3.5) if rng.random() < 0.25 else 0.0,
        beard=bool(rng.random() < 0.2),
    )


def sample_shot(rng: np.random.Generator) -> Shot:
    u = rng.uniform
    return Shot(
        angle=float(np.clip(rng.normal(0, 5), -12, 12)),
        scale=u(0.9, 1.1),
        shift_x=u(-4, 4),
        shift_y=u(-4, 4),
        background=tuple(u(25, 235, 3)),
        clutter=tuple(
            (*u(0, FRAME, 2), *u(8, 40, 2), u(0, 180), *u(25, 235, 3)) for _ in range(int(rng.integers(0, 4)))
        ),
        gain=u(0.55, 1.35),
        offset=u(-20, 20),
        contrast=u(0.75, 1.2),
        light_slope=u(0, 0.45),
        light_direction=u(0, 2 * np.pi),
        colour_cast=tuple(u(0.88, 1.12, 3)),
        smile=u(-0.4, 1.0),
        mouth_open=u(0.5, 4.5) if rng.random() < 0.3 else 0.0,
        brow_raise=u(-1.5, 2.5),
        frown=u(-1, 1.5),
        eye_open=u(0.6, 1.15),
        gaze_x=u(-1.5, 1.5),
        gaze_y=u(-0.6, 0.6),
        blur=u(0.3, 0.9) if rng.random() < 0.4 else 0.0,
        noise=u(1, 6),
    )


class _Canvas:
    """Draws in frame units on a supersampled BGR image, with cv2's sub-pixel coordinates."""

    def __init__(self, size: int, background: tuple[float, float, float]):
        self.scale = size * _SUPERSAMPLE / FRAME
        side = size * _SUPERSAMPLE
        self.image = np.empty((side, side, 3), np.uint8)
        cv2.rectangle(self.image, (0, 0), (side, side), _colour(background), -1)  # 10x faster than numpy

    def _fixed(self, points) -> np.ndarray:
        return np.round(np.asarray(points, np.float64) * self.scale * _FIXED).astype(np.int32)

    def _width(self, thickness: float) -> int:
        return max(1, round(thickness * self.scale))

    def polygon(self, points: np.ndarray, colour) -> None:
        cv2.fillPoly(self.image, [self._fixed(points)], _colour(colour), _AA, _SHIFT)

    def ring(self, centre, axes, width: float, colour, angle: float = 0.0) -> None:
        """The band ``width`` wide around an ellipse; a thick cv2.ellipse costs 15 times more."""
        outer = _ellipse_points(centre, (axes[0] + width, axes[1] + width), angle)
        inner = _ellipse_points(centre, axes, angle)
        cv2.fillPoly(self.image, [self._fixed(outer), self._fixed(inner)], _colour(colour), _AA, _SHIFT)

    def polyline(self, points: np.ndarray, colour, thickness: float) -> None:
        width = self._width(thickness)
        cv2.polylines(self.image, [self._fixed(points)], False, _colour(colour), width, _AA, _SHIFT)

    def ellipse(
        self, centre, axes, colour, *, angle=0.0, arc=(0, 360), thickness: float | None = None
    ) -> None:
        width = -1 if thickness is None else self._width(thickness)
        centre, axes = tuple(self._fixed(centre)), tuple(self._fixed(axes))
        cv2.ellipse(self.image, centre, axes, angle, *arc, _colour(colour), width, _AA, _SHIFT)


def _ellipse_points(centre, axes, angle: float, points: int = 40) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, points, endpoint=False)
    x, y = axes[0] * np.cos(t), axes[1] * np.sin(t)
    c, s = np.cos(np.radians(angle)), np.sin(np.radians(angle))
    return np.stack([centre[0] + c * x - s * y, centre[1] + s * x + c * y], axis=1)


def _colour(bgr) -> tuple[float, float, float]:
    return tuple(min(255.0, max(0.0, float(c))) for c in bgr)


def _head_outline(identity: Identity, grow: float = 0.0, points: int = 72) -> np.ndarray:
    """A superellipse whose lower half narrows towards the chin."""
    t = np.linspace(0, 2 * np.pi, points, endpoint=False)
    power = 2 / identity.squareness
    cos, sin = np.cos(t), np.sin(t)
    x = (identity.face_rx + grow) * np.sign(cos) * np.abs(cos) ** power
    y = (identity.face_ry + grow) * np.sign(sin) * np.abs(sin) ** power
    x *= 1 - identity.jaw_taper * np.clip(sin, 0, None) ** 2
    return np.stack([FRAME / 2 + x, identity.face_cy + y], axis=1)


def _hairline(identity: Identity, x: np.ndarray) -> np.ndarray:
    across = (x - FRAME / 2 - identity.parting) / identity.face_rx
    curve = identity.face_top + identity.hairline_depth + identity.hairline_bend * across**2
    # Never down to the brows, even at the temples, where the curve bends lowest.
    return np.minimum(curve, identity.brow_y - identity.brow_thick - 4)


def _draw_back_hair(canvas: _Canvas, identity: Identity, colour) -> None:
    outline = _head_outline(identity, grow=identity.hair_volume)
    outline[:, 1] = np.minimum(outline[:, 1], identity.hair_bottom)
    canvas.polygon(outline, colour)


def _draw_head(canvas: _Canvas, identity: Identity, skin) -> None:
    cx = FRAME / 2
    left, right = cx - identity.face_rx * 0.55, cx + identity.face_rx * 0.55
    neck = [[left, identity.face_cy], [right, identity.face_cy], [right, FRAME + 20], [left, FRAME + 20]]
    canvas.polygon(np.array(neck), skin * 0.8)
    ear_y = identity.eye_y + identity.ear_dy
    for side in (-1, 1):
        ear_x = cx + side * identity.face_rx * 0.97
        canvas.ellipse((ear_x, ear_y), (identity.ear_rx, identity.ear_ry), skin * 0.9)
        canvas.ellipse((ear_x, ear_y), (identity.ear_rx * 0.45, identity.ear_ry * 0.6), skin * 0.7)
    canvas.polygon(_head_outline(identity), skin)


def _draw_fringe(canvas: _Canvas, identity: Identity, colour) -> None:
    """The hair over the top of the head: the hair outline above the hairline."""
    outline = _head_outline(identity, grow=identity.hair_volume, points=180)
    # Outline points run left to right over the top, so the kept ones form one arc.
    arc = outline[outline[:, 1] < _hairline(identity, outline[:, 0])]
    if len(arc) < 2:
        return
    x = np.linspace(arc[-1, 0], arc[0, 0], 24)
    canvas.polygon(np.concatenate([arc, np.stack([x, _hairline(identity, x)], 1)]), colour)


def _draw_beard(canvas: _Canvas, identity: Identity, colour) -> None:
    outline = _head_outline(identity, grow=0.5)
    across = (outline[:, 0] - FRAME / 2) / identity.face_rx
    # Low under the lower lip, rising to the ears along the jaw as sideburns.
    top = identity.mouth_y + 5 - (identity.mouth_y - identity.eye_y) * across**2
    outline[:, 1] = np.maximum(outline[:, 1], top)
    canvas.polygon(outline, colour * 0.9)


def _draw_eyes(canvas: _Canvas, identity: Identity, shot: Shot, skin) -> None:
    height = identity.eye_ry * shot.eye_open
    # A skin-coloured ring as wide as the iris hides whatever of the iris sticks
    # out of the eye opening, which is cheaper than masking.
    lid = identity.iris_r * 2
    for side in (-1, 1):
        centre = (FRAME / 2 + side * identity.eye_dx, identity.eye_y)
        tilt = -side * identity.eye_tilt
        iris = (centre[0] + shot.gaze_x, centre[1] + shot.gaze_y)
        canvas.ellipse(centre, (identity.eye_rx, height), _SCLERA, angle=tilt)
        canvas.ellipse(iris, (identity.iris_r, identity.iris_r), IRIS_COLOURS[identity.iris])
        canvas.ellipse(iris, (identity.iris_r * 0.45, identity.iris_r * 0.45), (15, 15, 15))
        canvas.ellipse((iris[0] + 0.8, iris[1] - 0.8), (0.5, 0.5), (250, 250, 250))
        canvas.ring(centre, (identity.eye_rx, height), lid, skin, tilt)
        canvas.ellipse(
            centre, (identity.eye_rx, height), skin * 0.3, angle=tilt, arc=(180, 360), thickness=1.1
        )
        canvas.ellipse(centre, (identity.eye_rx, height), skin * 0.7, angle=tilt, arc=(0, 180), thickness=0.6)


def _draw_brows(canvas: _Canvas, identity: Identity, shot: Shot, colour) -> None:
    t = np.linspace(0, 1, 7)  # 0 at the inner end, 1 at the outer end
    y = (
        identity.brow_y
        - shot.brow_raise
        + (identity.brow_slant + shot.frown) * (1 - t)
        - identity.brow_arch * 4 * t * (1 - t)
    )
    half = identity.brow_thick * (1 - 0.5 * t) / 2  # tapering towards the temple
    for side in (-1, 1):
        x = FRAME / 2 + side * (identity.eye_dx - identity.brow_len * 0.45 + identity.brow_len * t)
        band = np.concatenate([np.stack([x, y - half], 1), np.stack([x, y + half], 1)[::-1]])
        canvas.polygon(band, colour)


def _draw_nose(canvas: _Canvas, identity: Identity, skin) -> None:
    cx, tip, width = FRAME / 2, identity.nose_tip_y, identity.nose_width
    bridge = np.array([[cx - 2.5, identity.eye_y + 2], [cx - 3, tip - 6], [cx - width * 0.8, tip - 1]])
    canvas.polyline(bridge, skin * 0.78, 1.0)
    canvas.ellipse((cx, tip), (width, width * 0.55), skin * 0.72, arc=(10, 170), thickness=1.0)
    for side in (-1, 1):
        canvas.ellipse((cx + side * width * 0.5, tip + 0.6), (width * 0.28, width * 0.14), skin * 0.4)


def _mouth_curves(identity: Identity, shot: Shot) -> tuple[np.ndarray, ...]:
    u = np.linspace(-1, 1, 13)
    half_width = identity.mouth_rx * (1 + 0.08 * shot.smile)
    x = FRAME / 2 + u * half_width
    middle = identity.mouth_y - 3.5 * shot.smile * u**2
    fullness = np.sqrt(1 - u**2)
    opening = shot.mouth_open * fullness
    upper_top = middle - identity.upper_lip * fullness * (1 - 0.3 * np.exp(-((u / 0.15) ** 2)))
    lower_top = middle + opening
    lower_bottom = lower_top + identity.lower_lip * fullness
    return x, upper_top, middle, lower_top, lower_bottom


def _band(x: np.ndarray, top: np.ndarray, bottom: np.ndarray) -> np.ndarray:
    return np.concatenate([np.stack([x, top], 1), np.stack([x, bottom], 1)[::-1]])


def _draw_mouth(canvas: _Canvas, identity: Identity, shot: Shot, skin, hair) -> None:
    x, upper_top, middle, lower_top, lower_bottom = _mouth_curves(identity, shot)
    lips = skin * 0.55 + _LIP_TINT * 0.45
    if identity.moustache:
        wider = FRAME / 2 + (x - FRAME / 2) * 1.15
        canvas.polygon(_band(wider, upper_top - identity.moustache - 1.2, upper_top - 0.6), hair)
    if shot.mouth_open:
        canvas.polygon(_band(x, middle, lower_top), _MOUTH_INSIDE)
    canvas.polygon(_band(x, upper_top, middle), lips * 0.9)
    canvas.polygon(_band(x, lower_top, lower_bottom), lips)
    canvas.polyline(np.stack([x, middle], 1), lips * 0.45, 0.8)


def draw_face(identity: Identity, shot: Shot, size: int = 112) -> np.ndarray:
    """The face before pose and lighting: a supersampled BGR image, upright and centred."""
    canvas = _Canvas(size, shot.background)
    for x, y, rx, ry, angle, *colour in shot.clutter:
        canvas.ellipse((x, y), (rx, ry), colour, angle=angle)
    skin, hair = SKIN_TONES[identity.skin], HAIR_COLOURS[identity.hair]
    _draw_back_hair(canvas, identity, hair)
    _draw_head(canvas, identity, skin)
    if identity.beard:
        _draw_beard(canvas, identity, hair)
    _draw_fringe(canvas, identity, hair)
    _draw_eyes(canvas, identity, shot, skin)
    _draw_brows(canvas, identity, shot, hair * 0.8)
    _draw_nose(canvas, identity, skin)
    _draw_mouth(canvas, identity, shot, skin, hair)
    return canvas.image


def _pose(image: np.ndarray, shot: Shot, size: int) -> np.ndarray:
    """Downsample to ``size``, then rotate, scale and shift about the centre."""
    small = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
    matrix = cv2.getRotationMatrix2D((size / 2, size / 2), shot.angle, shot.scale)
    matrix[:, 2] += np.array([shot.shift_x, shot.shift_y]) * size / FRAME
    return cv2.warpAffine(small, matrix, (size, size), borderMode=cv2.BORDER_REPLICATE)


def _gain_map(shot: Shot, size: int) -> np.ndarray:
    """Per-pixel, per-channel gain: exposure, a linear ramp across the image, and the colour cast."""
    ramp = np.linspace(-1, 1, size, dtype=np.float32) * np.float32(shot.light_slope)
    across = (
        np.float32(np.cos(shot.light_direction)) * ramp[None, :]
        + np.float32(np.sin(shot.light_direction)) * ramp[:, None]
    )
    exposure = np.float32(shot.gain) * (1 + across)
    return cv2.merge([exposure * np.float32(cast) for cast in shot.colour_cast])


def _noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    # Two uniform bytes summed make a triangular distribution close enough to
    # sensor noise, at a fifth of the cost of standard_normal.
    pairs = np.frombuffer(rng.bytes(2 * int(np.prod(shape))), np.uint8).reshape(2, *shape)
    return (pairs.sum(axis=0, dtype=np.float32) - 255.0) * np.float32(sigma / _BYTE_PAIR_STD)


def _light(image: np.ndarray, shot: Shot, rng: np.random.Generator) -> np.ndarray:
    gain = _gain_map(shot, image.shape[0])
    # Contrast is about mid-grey: gain * (contrast * (x - 128) + 128) + offset.
    lit = cv2.multiply(image, gain, scale=shot.contrast, dtype=cv2.CV_32F)
    lit += gain * np.float32(128 * (1 - shot.contrast)) + np.float32(shot.offset)
    if shot.blur:
        lit = cv2.GaussianBlur(lit, (0, 0), shot.blur)
    lit += _noise(rng, lit.shape, shot.noise)
    return np.clip(lit + 0.5, 0, 255).astype(np.uint8)


def render_face(identity: Identity, shot: Shot, rng: np.random.Generator, size: int = 112) -> np.ndarray:
    """One ``size`` x ``size`` BGR photo of ``identity``; ``rng`` supplies the sensor noise."""
    return _light(_pose(draw_face(identity, shot, size), shot, size), shot, rng)
