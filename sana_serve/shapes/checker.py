"""The quality checker: does a video show what its prompt asks for in the Shapes world?

Written from the world's spec (shapes/world.py), not from any model, so it can judge any generator
(ours, a baseline, or the renderer itself). It must tolerate what a small generative model
and H.264 do to a video (soft edges, noise, slightly-off colours, 4:2:0 chroma smear) while
still rejecting the wrong colour, shape, direction or background, a second object, noise,
and drift over time.

Per frame it reads:
- background: the per-channel median of the frame (the object covers under 6% of it, so the
  median is the background even while the object wraps over the border), snapped to the
  nearest palette background;
- coverage: how much of each pixel is object, in [0, 1] (see `_coverage`); this is a soft
  object mask, so a blurred or chroma-smeared edge counts as the fraction it is, instead of
  flipping in or out of a hard mask;
- colour: the median of the mostly-object pixels, snapped to the nearest palette colour;
- position: the circular centroid of the coverage (each axis as an angle on the torus), which
  stays right while the object is split across an edge, where a plain mean would land in the
  middle of the frame; blur moves mass but not its centroid;
- shape: the ideal circle / square / triangle mask aligned on that centroid (nudged by up to
  1 px) with the best IoU against the coverage (soft IoU: sum(min)/sum(max), which is plain
  IoU when the coverage is a crisp mask);
- motion: the centroid displacement (wrapped to [-size/2, size/2)) per frame, the direction
  being the sign of its dominant axis.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from .world import BACKGROUNDS, COLORS, DIRECTIONS, FPS, SHAPES, shape_mask, shape_stamp

_BG_NAMES = list(BACKGROUNDS)
_BG_RGB = np.array([BACKGROUNDS[n] for n in _BG_NAMES], dtype=np.float32)
_COLOR_NAMES = list(COLORS)
_COLOR_RGB = np.array([COLORS[n] for n in _COLOR_NAMES], dtype=np.float32)

# A pixel can be object only if it is more than this far (RGB distance) from the background:
# half the smallest background/object gap in the palette (purple on gray, ~101 apart), so
# every object colour clears it with margin and noise (std 8 per channel) does not.
OBJECT_DISTANCE = 0.5 * float(
    np.linalg.norm(_BG_RGB[:, None, :] - _COLOR_RGB[None, :, :], axis=-1).min()
)
# The measured background must be near some palette background at all; a frame of noise
# or a wrong-coloured backdrop is not "black" just because black is the closest.
MAX_BACKGROUND_ERROR = 40.0
# Likewise for the object. The closest pair of object colours (orange/yellow) is ~71 apart;
# beyond 60 from every palette entry a colour is not one of them.
MAX_COLOR_ERROR = 60.0
# "Exactly one object of the expected shape": the object's total coverage must be within
# this fraction of the shape's area (a second object doubles it, noise multiplies it), and
# its best IoU must be at least MIN_IOU.
AREA_TOLERANCE = 0.35
MIN_IOU = 0.5
# Motion per frame: the spec says 1 px. Below MIN_SPEED_PX the object is standing still;
# above MAX_SPEED_PX the centroid jumped (a teleport, or two blobs), which is not motion.
MIN_SPEED_PX = 0.3
MAX_SPEED_PX = 4.0

# Shapes are compared in a window around the centroid: half-size 13 covers the largest shape
# (triangle base half-width 9.5) plus a 1 px nudge plus the centroid's rounding.
_WINDOW_HALF = 13
_NUDGES = [(sx, sy) for sy in (-1, 0, 1) for sx in (-1, 0, 1)]


# --- Torus helpers and shape templates -----------------------------------------------------

def _circular_mean(weights: np.ndarray, period: int) -> np.ndarray:
    """Circular mean position along the last axis of `weights` (..., period) -> (...).
    A uniform weight (e.g. a noise floor) adds nothing to it, only the object's lump does."""
    theta = 2 * np.pi * np.arange(period) / period
    s = weights @ np.sin(theta)
    c = weights @ np.cos(theta)
    return (np.arctan2(s, c) % (2 * np.pi)) * period / (2 * np.pi)


def _wrap(d, period: int):
    """Signed displacement on a ring, in [-period/2, period/2)."""
    return (d + period / 2) % period - period / 2


@dataclass(frozen=True)
class _ShapeTemplate:
    name: str
    area: int
    centroid: tuple[float, float]  # (x, y) of the circular centroid relative to the centre
    windows: np.ndarray  # (len(_NUDGES), W*W) float32: the shape in the window, at each nudge


def _build_template(shape: str, size: int) -> _ShapeTemplate:
    # The centroid offset is measured exactly as video is (circular mean on the same torus),
    # so a rendered object and its template line up to the pixel. It is zero for the
    # symmetric circle and square and ~2.8 px below the bounding-box centre for the triangle.
    stamp = shape_stamp(shape, size).astype(np.float64)
    cx = _wrap(_circular_mean(stamp.sum(axis=0), size), size)
    cy = _wrap(_circular_mean(stamp.sum(axis=1), size), size)
    local = np.arange(-_WINDOW_HALF, _WINDOW_HALF + 1)
    windows = np.stack([
        shape_mask(shape, local[None, :] - sx, local[:, None] - sy).ravel()
        for sx, sy in _NUDGES
    ]).astype(np.float32)
    return _ShapeTemplate(shape, int(stamp.sum()), (float(cx), float(cy)), windows)


_TEMPLATES: dict[int, list[_ShapeTemplate]] = {}


def _templates(size: int) -> list[_ShapeTemplate]:
    if size not in _TEMPLATES:
        _TEMPLATES[size] = [_build_template(s, size) for s in SHAPES]
    return _TEMPLATES[size]


# --- Per-frame reading ---------------------------------------------------------------------

@dataclass(frozen=True)
class FrameReading:
    """What the checker saw in one frame; None where nothing could be read."""

    background: str | None
    color: str | None
    shape: str | None
    iou: float  # best shape's IoU
    area: float  # total object coverage, in pixels
    centroid: tuple[float, float] | None  # (x, y) in pixels
    direction: str | None  # from the centroid's motion around this frame


def _nearest(rgb: np.ndarray, palette: np.ndarray) -> tuple[int, float]:
    d = np.linalg.norm(palette - rgb[None, :], axis=-1)
    i = int(d.argmin())
    return i, float(d[i])


def _nearest_object_color(rgb: np.ndarray, bg: np.ndarray) -> tuple[int, float]:
    """Nearest palette object colour to `rgb`, allowing it to be blended with the background.

    A thin shape under blur has few pure pixels: the median of a blurred triangle's core is
    ~75% yellow, 25% black, which is far from yellow (and not much nearer anything else). So
    each palette colour P is compared as the segment bg + a (P - bg), a in [0.5, 1] (a
    "mostly P" pixel), and the distance is to the nearest point of that segment. Blending
    with the background changes brightness along P's own line, so it cannot turn one palette
    colour into another: they leave the background in different directions.
    """
    lines = _COLOR_RGB - bg[None, :]  # (colours, 3)
    a = np.clip((lines @ (rgb - bg)) / np.maximum((lines * lines).sum(axis=1), 1e-6), 0.5, 1.0)
    d = np.linalg.norm(bg[None, :] + a[:, None] * lines - rgb[None, :], axis=-1)
    i = int(d.argmin())
    return i, float(d[i])


def _coverage(frame: np.ndarray, bg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel object coverage in [0, 1] of one (H, W, 3) float frame on background colour
    `bg`, and the object's colour (zeros when there is no object).

    A hard "far from the background" mask is wrong on soft edges: red on black is ~230 apart,
    so "> 50 from black" takes in every blurred edge pixel that is only 22% red and grows a
    15 px square into a 17 px one with clipped corners, which is the 17 px circle. And H.264's
    4:2:0 chroma smears colour edges over 2 px, so edge pixels sit at ~50% and a hard mask
    flickers between sizes. So, in two passes:
    1. candidates = pixels farther than OBJECT_DISTANCE from the background; their median is
       the object's colour (the interior outvotes the edge);
    2. coverage = how far each candidate lies from the background towards that colour
       (blur and chroma subsampling mix the two linearly). A candidate that is no blend of
       the two (far off the background-object line: a second object of another colour, or
       noise) counts as fully covered, so it still counts against "one object".
    """
    delta = frame - bg  # (H, W, 3)
    candidates = np.linalg.norm(delta, axis=-1) > OBJECT_DISTANCE
    if not candidates.any():
        return np.zeros(candidates.shape, np.float32), np.zeros(3, np.float32)
    color = np.median(frame[candidates], axis=0)
    axis = color - bg
    length = float(np.linalg.norm(axis))
    if length <= OBJECT_DISTANCE:  # barely off the background (noise): no line to project on
        return candidates.astype(np.float32), color
    axis /= length
    along = delta @ axis  # (H, W): distance travelled from the background towards the object
    off_line = np.linalg.norm(delta - along[..., None] * axis, axis=-1) > OBJECT_DISTANCE
    coverage = np.where(off_line, 1.0, np.clip(along / length, 0.0, 1.0)) * candidates
    core = coverage >= 0.5
    if core.any():
        color = np.median(frame[core], axis=0)
    return coverage.astype(np.float32), color


def _shape_ious(coverage: np.ndarray, cx: np.ndarray, cy: np.ndarray) -> np.ndarray:
    """(T, len(SHAPES)) best soft IoU of each ideal shape against each frame's coverage."""
    t_len, height, width = coverage.shape
    mass = coverage.sum(axis=(1, 2))
    flat = coverage.reshape(t_len, -1)
    local = np.arange(-_WINDOW_HALF, _WINDOW_HALF + 1)
    ious = []
    for tpl in _templates(height):
        # Where this template's centre must be for its centroid to sit on the observed one;
        # gather that window (torus indexing) and score all nudges with one matmul. With a
        # crisp template, sum(min) is the coverage inside it (`inter`) and sum(max) is the
        # template's area plus the coverage outside it (`union`).
        ox = np.floor(cx - tpl.centroid[0] + 0.5).astype(int)
        oy = np.floor(cy - tpl.centroid[1] + 0.5).astype(int)
        rows = (oy[:, None] + local[None, :]) % height  # (T, W)
        cols = (ox[:, None] + local[None, :]) % width
        idx = (rows[:, :, None] * width + cols[:, None, :]).reshape(t_len, -1)
        window = np.take_along_axis(flat, idx, axis=1)  # (T, W*W)
        inter = window @ tpl.windows.T  # (T, nudges)
        union = mass[:, None] + tpl.windows.sum(axis=1)[None, :] - inter
        ious.append((inter / np.maximum(union, 1e-6)).max(axis=1))
    return np.stack(ious, axis=1)


def _directions(cx: np.ndarray, cy: np.ndarray, present: np.ndarray,
                size: int) -> list[str | None]:
    """Direction of motion at each frame, from the centroid displacement over a two-frame
    span around it, divided by two.

    Two frames, not one, because H.264's 4:2:0 chroma works on 2x2 pixel blocks: an object
    whose colour differs from the background mostly in chroma (yellow or purple on gray)
    appears to move 0.2 px then 1.8 px, alternately, as its edges cross block boundaries.
    Over two frames the parity cancels and the true 1 px/frame shows.
    """
    t_len = len(cx)
    out: list[str | None] = []
    for t in range(t_len):
        lo = max(0, min(t - 1, t_len - 3))
        hi = min(lo + 2, t_len - 1)
        if hi == lo or not (present[lo] and present[hi]):
            out.append(None)
            continue
        dx = float(_wrap(cx[hi] - cx[lo], size)) / (hi - lo)
        dy = float(_wrap(cy[hi] - cy[lo], size)) / (hi - lo)
        speed = max(abs(dx), abs(dy))
        if not MIN_SPEED_PX <= speed <= MAX_SPEED_PX:
            out.append(None)
        elif abs(dx) >= abs(dy):
            out.append("right" if dx > 0 else "left")
        else:
            out.append("down" if dy > 0 else "up")
    return out


def read_frames(frames: np.ndarray) -> list[FrameReading]:
    """What the checker sees in each frame of a (T, size, size, 3) uint8 video."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[1] != frames.shape[2]:
        raise ValueError(f"frames must be (T, size, size, 3), got shape {frames.shape}")
    t_len, size = frames.shape[0], frames.shape[1]
    video = frames.astype(np.float32)

    bg_rgb = np.median(video.reshape(t_len, -1, 3), axis=1)  # (T, 3)
    coverage = np.zeros(video.shape[:3], dtype=np.float32)
    obj_rgb = np.zeros((t_len, 3), dtype=np.float32)
    for t in range(t_len):
        coverage[t], obj_rgb[t] = _coverage(video[t], bg_rgb[t])
    mass = coverage.sum(axis=(1, 2))
    present = mass > 0
    cx = _circular_mean(coverage.sum(axis=1), size)  # (T,)
    cy = _circular_mean(coverage.sum(axis=2), size)
    ious = _shape_ious(coverage, cx, cy)
    directions = _directions(cx, cy, present, size)

    readings = []
    for t in range(t_len):
        bg_i, bg_err = _nearest(bg_rgb[t], _BG_RGB)
        background = _BG_NAMES[bg_i] if bg_err <= MAX_BACKGROUND_ERROR else None
        if not present[t]:
            readings.append(FrameReading(background, None, None, 0.0, 0.0, None, None))
            continue
        c_i, c_err = _nearest_object_color(obj_rgb[t], bg_rgb[t])
        s_i = int(ious[t].argmax())
        readings.append(FrameReading(
            background=background,
            color=_COLOR_NAMES[c_i] if c_err <= MAX_COLOR_ERROR else None,
            shape=SHAPES[s_i],
            iou=float(ious[t, s_i]),
            area=float(mass[t]),
            centroid=(float(cx[t]), float(cy[t])),
            direction=directions[t],
        ))
    return readings


# --- The verdict ---------------------------------------------------------------------------

@dataclass
class CheckResult:
    """The verdict on one video. Fractions are over frames; `window_passed[i]` is the verdict
    on the i-th `window_seconds` stretch alone."""

    expected: tuple[str, str, str, str]
    num_frames: int
    background_fraction: float
    color_fraction: float
    shape_fraction: float
    direction_fraction: float
    window_passed: list[bool]
    passed: bool
    reason: str  # "" when passed
    observed: tuple[str | None, str | None, str | None, str | None]  # most common readings
    frames: list[FrameReading] = field(repr=False, default_factory=list)


def _most_common(values) -> str | None:
    values = [v for v in values if v is not None]
    return Counter(values).most_common(1)[0][0] if values else None


def check_video(
    frames: np.ndarray,
    expected: tuple[str, str, str, str],
    fps: int = FPS,
    window_seconds: float = 4,
    min_fraction: float = 0.8,
) -> CheckResult:
    """Judge a (T, size, size, 3) uint8 video against `expected` = (color, shape, direction,
    background). Passes when each attribute matches in >= `min_fraction` of the frames, AND
    in every `window_seconds` window on its own (so drift late in a long video cannot hide
    in the average), AND the frames show exactly one object (folded into the shape test)."""
    color, shape, direction, background = expected
    if (color not in COLORS or shape not in SHAPES or direction not in DIRECTIONS
            or background not in BACKGROUNDS):
        raise ValueError(f"expected {expected!r} is not a combination of the Shapes world")

    frames = np.asarray(frames)
    return _verdict(read_frames(frames), expected, frames.shape[1], fps, window_seconds,
                    min_fraction)


def _verdict(readings: list[FrameReading], expected: tuple[str, str, str, str], size: int,
             fps: int, window_seconds: float, min_fraction: float) -> CheckResult:
    color, shape, direction, background = expected
    t_len = len(readings)
    want_area = {tpl.name: tpl.area for tpl in _templates(size)}[shape]
    ok = {
        "background": np.array([r.background == background for r in readings], dtype=bool),
        "colour": np.array([r.color == color for r in readings], dtype=bool),
        # Right best match, a decent overlap, and the area of one such object.
        "shape": np.array([
            r.shape == shape and r.iou >= MIN_IOU
            and abs(r.area - want_area) <= AREA_TOLERANCE * want_area
            for r in readings
        ], dtype=bool),
        "direction": np.array([r.direction == direction for r in readings], dtype=bool),
    }
    observed = (
        _most_common(r.color for r in readings),
        _most_common(r.shape for r in readings),
        _most_common(r.direction for r in readings),
        _most_common(r.background for r in readings),
    )
    seen = dict(zip(("colour", "shape", "direction", "background"), observed))

    def frac(flags: np.ndarray) -> float:
        return float(flags.mean()) if flags.size else 0.0

    reasons = []
    if t_len < 2:
        reasons.append(f"{t_len} frame(s): need at least 2 to see motion")
    for name, flags in ok.items():
        if frac(flags) < min_fraction:
            reasons.append(f"{name} matched in {frac(flags):.0%} of frames "
                           f"(mostly saw {seen[name]})")

    # Windows of `window_seconds`; a tail shorter than half a window joins the previous one,
    # so a 4.1 s video is not judged on a 2-frame window.
    window = max(1, int(round(window_seconds * fps)))
    bounds = list(range(0, t_len, window)) + [t_len]
    if len(bounds) > 2 and bounds[-1] - bounds[-2] < window / 2:
        del bounds[-2]
    window_passed = []
    for i, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:])):
        bad = {name: frac(flags[lo:hi]) for name, flags in ok.items()
               if frac(flags[lo:hi]) < min_fraction}
        window_passed.append(not bad)
        if bad and len(bounds) > 2:  # with one window, the overall reasons already say it
            detail = ", ".join(f"{name} {f:.0%}" for name, f in bad.items())
            reasons.append(f"window {i} (frames {lo}-{hi - 1}) failed: {detail}")

    return CheckResult(
        expected=tuple(expected),
        num_frames=t_len,
        background_fraction=frac(ok["background"]),
        color_fraction=frac(ok["colour"]),
        shape_fraction=frac(ok["shape"]),
        direction_fraction=frac(ok["direction"]),
        window_passed=window_passed,
        passed=not reasons,
        reason="; ".join(reasons),
        observed=observed,
        frames=readings,
    )
