"""The Shapes world: the universe the embedded default model is trained on and judged in.

Everything here follows the world's spec (the constants below) to the pixel, because two other
parts depend on it being exact: the trainer renders its data set from `render`, and the
checker (`engine.shapes.checker`) judges generated video against the same spec. numpy only,
so the data pipeline and the eval never need torch.

Geometry conventions (stated once, used everywhere):
- A frame is `size x size` pixels; pixel (row i, column j) has its centre at (x=j, y=i).
  y grows downward, so "up" is -y.
- The frame is a torus: an object crossing the right edge reappears on the left.
- An object's position (x, y) is the centre of its bounding box, on the integer pixel grid.
  Because it starts on the grid and moves a whole pixel per frame, every frame's mask is an
  exact translate of one stamp, so the object's area never changes (the spec says the object
  never changes size, and the checker's area test relies on that).
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass

import numpy as np

# --- The palette, exactly as specified -----------------------------------------------------

FRAME_SIZE = 64
FPS = 16
SPEED_PX_PER_FRAME = 1

BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "black": (10, 10, 10),
    "white": (240, 240, 240),
    "gray": (128, 128, 128),
}

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (40, 80, 220),
    "yellow": (230, 210, 40),
    "purple": (150, 60, 200),
    "orange": (240, 140, 30),
}

SHAPES: tuple[str, ...] = ("circle", "square", "triangle")

CIRCLE_DIAMETER = 17
SQUARE_SIDE = 15
TRIANGLE_HEIGHT = 17
TRIANGLE_BASE = 19

# (dx, dy) in pixels per frame; image rows grow downward, so "up" is negative y.
DIRECTIONS: dict[str, tuple[int, int]] = {
    "left": (-SPEED_PX_PER_FRAME, 0),
    "right": (SPEED_PX_PER_FRAME, 0),
    "up": (0, -SPEED_PX_PER_FRAME),
    "down": (0, SPEED_PX_PER_FRAME),
}

Combination = tuple[str, str, str, str]  # (color, shape, direction, background)


# --- Shapes as pixel-centre tests ----------------------------------------------------------

def shape_mask(shape: str, dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """True where a pixel centre at offset (dx, dy) from the object's centre is inside `shape`.

    Defining shapes by a pixel-centre test (no anti-aliasing) keeps the frames to exactly
    two colours, which makes the world's "solid colour" literal and the area constant.
    Odd sizes (17, 15, 19) centred on a pixel are symmetric left/right.
    """
    dx = np.asarray(dx, dtype=np.float64)
    dy = np.asarray(dy, dtype=np.float64)
    if shape == "circle":
        r = CIRCLE_DIAMETER / 2
        return dx * dx + dy * dy <= r * r
    if shape == "square":
        h = SQUARE_SIDE / 2
        return (np.abs(dx) <= h) & (np.abs(dy) <= h)
    if shape == "triangle":
        # Apex up at dy = -H/2, base at dy = +H/2; half-width grows linearly to B/2 at the base.
        h = TRIANGLE_HEIGHT / 2
        half_width = (TRIANGLE_BASE / 2) * (dy + h) / TRIANGLE_HEIGHT
        return (dy >= -h) & (dy <= h) & (np.abs(dx) <= half_width)
    raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")


def _torus_offsets(size: int) -> np.ndarray:
    """Signed offsets 0, 1, ..., size/2-1, -size/2, ..., -1: index i's distance from index 0 on
    a ring. Evaluating a shape at these offsets draws it centred on pixel 0 with wrap-around."""
    idx = np.arange(size)
    return (idx + size // 2) % size - size // 2


def shape_stamp(shape: str, size: int = FRAME_SIZE) -> np.ndarray:
    """(size, size) bool mask of `shape` centred on pixel (0, 0) of a torus. Rolling it by
    (y, x) places the object at (x, y), wrap-around included."""
    off = _torus_offsets(size)
    return shape_mask(shape, off[None, :], off[:, None])


def shape_area(shape: str) -> int:
    """Pixel count of a shape as rendered (constant over time by construction)."""
    return int(shape_stamp(shape).sum())


# --- Scenes and rendering ------------------------------------------------------------------

@dataclass(frozen=True)
class Scene:
    """One video of the world. (x, y) is the object's start centre in pixels; non-integer
    values are rounded to the pixel grid at render time (see module docstring)."""

    color: str
    shape: str
    direction: str
    background: str
    x: float
    y: float

    def __post_init__(self) -> None:
        for value, options, what in (
            (self.color, COLORS, "color"),
            (self.shape, SHAPES, "shape"),
            (self.direction, DIRECTIONS, "direction"),
            (self.background, BACKGROUNDS, "background"),
        ):
            if value not in options:
                raise ValueError(f"unknown {what} {value!r}; expected one of {tuple(options)}")

    @property
    def combination(self) -> Combination:
        return (self.color, self.shape, self.direction, self.background)

    @property
    def prompt(self) -> str:
        return template_prompt(*self.combination)


def _round_half_up(v: float) -> int:
    # Python's round() is banker's rounding; half-up keeps 31.5 and 32.5 behaving alike.
    return int(math.floor(float(v) + 0.5))


def render(scene: Scene, num_frames: int, size: int = FRAME_SIZE) -> np.ndarray:
    """Render `num_frames` frames of `scene` as a (T, size, size, 3) uint8 array."""
    if num_frames < 0:
        raise ValueError(f"num_frames must be >= 0, got {num_frames}")
    stamp = shape_stamp(scene.shape, size)
    vx, vy = DIRECTIONS[scene.direction]
    t = np.arange(num_frames)
    x = (_round_half_up(scene.x) + vx * t) % size  # (T,)
    y = (_round_half_up(scene.y) + vy * t) % size
    # Placing the stamp at (x, y) on the torus == reading it at (row - y, col - x) mod size;
    # one gather does all frames at once.
    rows = (np.arange(size)[None, :] - y[:, None]) % size  # (T, size)
    cols = (np.arange(size)[None, :] - x[:, None]) % size
    masks = stamp[rows[:, :, None], cols[:, None, :]]  # (T, size, size)

    frames = np.empty((num_frames, size, size, 3), dtype=np.uint8)
    frames[...] = np.array(BACKGROUNDS[scene.background], dtype=np.uint8)
    frames[masks] = np.array(COLORS[scene.color], dtype=np.uint8)
    return frames


# --- Combinations and the held-out split ---------------------------------------------------

def all_combinations() -> list[Combination]:
    """All 6 * 3 * 4 * 3 = 216 (color, shape, direction, background) tuples, in palette order
    (color slowest, background fastest)."""
    return list(itertools.product(COLORS, SHAPES, DIRECTIONS, BACKGROUNDS))


def held_out_combinations() -> list[Combination]:
    """24 combinations (11%) never shown in training, to measure compositional generalisation.

    Chosen by a fixed formula rather than a seeded shuffle so the split can never change with a
    numpy version. The formula is balanced: each colour is held out 4 times, each shape 8,
    each direction 6, each background 8; and every *pair* of attribute values (e.g. red +
    triangle, up + white) still occurs in training, so a held-out prompt only asks for a new
    combination of things the model has seen together pairwise (tests verify this).
    """
    colors, directions, backgrounds = list(COLORS), list(DIRECTIONS), list(BACKGROUNDS)
    held = []
    for k in range(24):
        held.append((
            colors[k % 6],
            SHAPES[(k + k // 6) % 3],
            directions[k % 4],
            backgrounds[(k + k // 4) % 3],
        ))
    return held


def training_combinations() -> list[Combination]:
    """The 192 combinations the trainer may use, in `all_combinations` order."""
    held = set(held_out_combinations())
    return [c for c in all_combinations() if c not in held]


def random_scene(rng: np.random.Generator, combos: list[Combination] | None = None) -> Scene:
    """A uniformly random combination (from `combos`, default all 216) at a uniformly random
    integer start position."""
    combos = all_combinations() if combos is None else list(combos)
    if not combos:
        raise ValueError("combos is empty")
    color, shape, direction, background = combos[int(rng.integers(len(combos)))]
    x, y = (int(v) for v in rng.integers(0, FRAME_SIZE, size=2))
    return Scene(color, shape, direction, background, x, y)


# --- Prompts -------------------------------------------------------------------------------

def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def template_prompt(color: str, shape: str, direction: str, background: str) -> str:
    """The canonical prompt: 'a red circle moving right on a black background'."""
    return f"{_article(color)} {color} {shape} moving {direction} on a {background} background"


# Synonyms used by `paraphrase`; the first entry of each list is the canonical word.
# `parse_prompt` reads the same tables, so every word paraphrase can emit is understood.
COLOR_WORDS: dict[str, tuple[str, ...]] = {
    "red": ("red", "crimson", "scarlet"),
    "green": ("green", "emerald"),
    "blue": ("blue", "cobalt"),
    "yellow": ("yellow", "golden"),
    "purple": ("purple", "violet"),
    "orange": ("orange", "tangerine"),
}
SHAPE_WORDS: dict[str, tuple[str, ...]] = {
    "circle": ("circle", "ball", "disc", "disk", "dot"),
    "square": ("square", "box", "block"),
    "triangle": ("triangle",),
}
DIRECTION_PHRASES: dict[str, tuple[str, ...]] = {
    "left": ("left", "leftward", "leftwards", "to the left"),
    "right": ("right", "rightward", "rightwards", "to the right"),
    "up": ("up", "upward", "upwards"),
    "down": ("down", "downward", "downwards"),
}
BACKGROUND_WORDS: dict[str, tuple[str, ...]] = {
    "black": ("black", "dark"),
    "white": ("white", "light"),
    "gray": ("gray", "grey"),
}
MOTION_VERBS = ("moving", "heading", "drifting", "sliding", "gliding", "travelling")
_BACKDROP_NOUNS = ("background", "backdrop")

_PARAPHRASE_TEMPLATES = (
    "{a_color} {color} {shape} {verb} {direction} on {a_bg} {bg} {ground}",
    "{a_color} {color} {shape} {verb} {direction} across {a_bg} {bg} {ground}",
    "{a_color} {color} {shape} {verb} {direction} against {a_bg} {bg} {ground}",
    "on {a_bg} {bg} {ground}, {a_color} {color} {shape} is {verb} {direction}",
    "{a_bg} {bg} {ground} with {a_color} {color} {shape} {verb} {direction}",
    "{a_shape} {shape} in {color}, {verb} {direction} over {a_bg} {bg} {ground}",
    "{color} {shape} {verb} {direction}, {bg} {ground}",
)


def _pick(rng: np.random.Generator, options):
    return options[int(rng.integers(len(options)))]


def paraphrase(color: str, shape: str, direction: str, background: str,
               rng: np.random.Generator) -> str:
    """A random rewording of the template prompt (synonyms and sentence shapes), so the
    text encoder learns the meaning rather than one exact string. Always parseable back by
    `parse_prompt`."""
    words = {
        "color": _pick(rng, COLOR_WORDS[color]),
        "shape": _pick(rng, SHAPE_WORDS[shape]),
        "direction": _pick(rng, DIRECTION_PHRASES[direction]),
        "bg": _pick(rng, BACKGROUND_WORDS[background]),
        "verb": _pick(rng, MOTION_VERBS),
        "ground": _pick(rng, _BACKDROP_NOUNS),
    }
    text = _pick(rng, _PARAPHRASE_TEMPLATES).format(
        a_color=_article(words["color"]),
        a_shape=_article(words["shape"]),
        a_bg=_article(words["bg"]),
        **words,
    )
    if rng.integers(2):  # prompts arrive both ways; casing must not matter
        text = text[0].upper() + text[1:]
    return text


def _word_index(table: dict[str, tuple[str, ...]]) -> dict[str, str]:
    # Only single words go in the index; "to the left" is recognised by its word "left".
    return {w: canonical for canonical, ws in table.items() for w in ws if " " not in w}


_COLOR_INDEX = _word_index(COLOR_WORDS)
_SHAPE_INDEX = _word_index(SHAPE_WORDS)
_DIRECTION_INDEX = _word_index(DIRECTION_PHRASES)
_BACKGROUND_INDEX = _word_index(BACKGROUND_WORDS)


def parse_prompt(prompt: str) -> Combination | None:
    """(color, shape, direction, background) that `prompt` asks for, or None when the prompt
    is outside the world (the eval then has nothing to check it against).

    A bag-of-words reading: each attribute must be named, and named only once (synonyms of
    the same value are fine). Object colours and background colours are disjoint vocabularies
    in this world, which is what lets "a red circle ... on a white background" parse without
    any grammar. Anything ambiguous (two colours, "circles", no background) is None.
    """
    tokens = re.findall(r"[a-z]+", prompt.lower())
    found = []
    for index in (_COLOR_INDEX, _SHAPE_INDEX, _DIRECTION_INDEX, _BACKGROUND_INDEX):
        values = {index[t] for t in tokens if t in index}
        if len(values) != 1:
            return None
        found.append(values.pop())
    return tuple(found)  # type: ignore[return-value]
