"""The Shapes world: renderer vs the spec in shapes/world.py, prompts, the held-out split, and the
quality checker (accepts every rendered combination, also degraded; rejects what it must)."""

import math
import subprocess

import numpy as np
import pytest

from sana_serve.shapes import (
    BACKGROUNDS,
    COLORS,
    DIRECTIONS,
    FPS,
    FRAME_SIZE,
    SHAPES,
    Scene,
    all_combinations,
    check_video,
    held_out_combinations,
    paraphrase,
    parse_prompt,
    random_scene,
    render,
    template_prompt,
    training_combinations,
)

ATTRIBUTES = (tuple(COLORS), SHAPES, tuple(DIRECTIONS), tuple(BACKGROUNDS))


def object_mask(frames: np.ndarray, background: str) -> np.ndarray:
    return np.any(frames != np.array(BACKGROUNDS[background], np.uint8), axis=-1)


def degrade(frames: np.ndarray, rng: np.random.Generator, noise_std: float = 8.0) -> np.ndarray:
    """What a small generator plus a codec might do: 3x3 box blur, then gaussian noise."""
    f = frames.astype(np.float32)
    f = sum(np.roll(f, (dy, dx), axis=(1, 2)) for dy in (-1, 0, 1) for dx in (-1, 0, 1)) / 9
    f = f + rng.normal(0.0, noise_std, f.shape)
    return np.clip(np.rint(f), 0, 255).astype(np.uint8)


def scene_for(index: int, combo) -> Scene:
    # Spread start positions over the frame, edges included, so wrap-around is exercised.
    return Scene(*combo, x=(index * 7) % FRAME_SIZE, y=(index * 13) % FRAME_SIZE)


# --- The renderer against the spec ----------------------------------------------------------

def test_palette_is_exactly_the_spec():
    assert BACKGROUNDS == {"black": (10, 10, 10), "white": (240, 240, 240),
                           "gray": (128, 128, 128)}
    assert COLORS == {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 80, 220),
                      "yellow": (230, 210, 40), "purple": (150, 60, 200),
                      "orange": (240, 140, 30)}
    assert SHAPES == ("circle", "square", "triangle")
    assert DIRECTIONS == {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
    assert (FRAME_SIZE, FPS) == (64, 16)


def test_frames_have_the_spec_size_and_exact_colours():
    frames = render(Scene("orange", "square", "down", "gray", 32, 32), 5)
    assert frames.shape == (5, 64, 64, 3) and frames.dtype == np.uint8
    assert tuple(frames[0, 32, 32]) == COLORS["orange"]  # the centre
    assert tuple(frames[0, 32 - 7, 32 - 7]) == COLORS["orange"]  # a corner of the 15 px square
    assert tuple(frames[0, 32 - 8, 32]) == BACKGROUNDS["gray"]  # just outside it
    assert tuple(frames[0, 0, 0]) == BACKGROUNDS["gray"]
    # Solid colours only: every pixel is either the background or the object.
    colours = {tuple(c) for c in frames.reshape(-1, 3)}
    assert colours == {COLORS["orange"], BACKGROUNDS["gray"]}


@pytest.mark.parametrize("shape, ideal_area, width, height", [
    ("circle", math.pi * 8.5 ** 2, 17, 17),
    ("square", 15 * 15, 15, 15),
    ("triangle", 19 * 17 / 2, 19, 17),
])
def test_shape_size_matches_the_spec(shape, ideal_area, width, height):
    mask = object_mask(render(Scene("red", shape, "right", "black", 32, 32), 1), "black")[0]
    assert abs(mask.sum() - ideal_area) <= 0.03 * ideal_area
    rows, cols = np.nonzero(mask)
    assert cols.max() - cols.min() + 1 == width
    assert rows.max() - rows.min() + 1 == height


def test_triangle_points_up():
    mask = object_mask(render(Scene("red", "triangle", "up", "white", 32, 32), 1), "white")[0]
    widths = [int(row.sum()) for row in mask if row.any()]
    assert widths[0] == 1 and widths[-1] == 19  # apex on top, base at the bottom
    assert widths == sorted(widths)


@pytest.mark.parametrize("direction", list(DIRECTIONS))
def test_object_moves_one_pixel_per_frame(direction):
    masks = object_mask(render(Scene("blue", "triangle", direction, "black", 20, 40), 10),
                        "black")
    dx, dy = DIRECTIONS[direction]
    for t in range(9):
        assert np.array_equal(masks[t + 1], np.roll(masks[t], (dy, dx), axis=(0, 1)))


@pytest.mark.parametrize("shape", SHAPES)
def test_wrap_around_keeps_the_object_whole(shape):
    frames = render(Scene("green", shape, "right", "white", 60, 1), FRAME_SIZE + 1)
    masks = object_mask(frames, "white")
    areas = masks.sum(axis=(1, 2))
    assert (areas == areas[0]).all()  # constant area, split or not
    # At x=60 the shape crosses the right edge (and at y=1 the top): it shows on both sides.
    assert masks[0][:, 0].any() and masks[0][:, 63].any()
    assert masks[0][0, :].any() and masks[0][63, :].any()
    # One lap of the torus brings it back exactly.
    assert np.array_equal(frames[0], frames[FRAME_SIZE])


def test_fractional_start_snaps_to_the_pixel_grid():
    # Off-grid starts would make the pixel-centre mask change size from frame to frame.
    a = render(Scene("red", "circle", "left", "black", 31.6, 10.2), 3)
    b = render(Scene("red", "circle", "left", "black", 32, 10), 3)
    assert np.array_equal(a, b)


def test_scene_rejects_unknown_attributes():
    with pytest.raises(ValueError):
        Scene("pink", "circle", "left", "black", 0, 0)


# --- Combinations, prompts, held-out split --------------------------------------------------

def test_all_combinations_are_fixed_and_complete():
    combos = all_combinations()
    assert len(combos) == len(set(combos)) == 6 * 3 * 4 * 3
    assert combos[0] == ("red", "circle", "left", "black")
    assert combos == all_combinations()


def test_template_prompt():
    assert template_prompt("red", "circle", "right", "black") == \
        "a red circle moving right on a black background"
    assert template_prompt("orange", "triangle", "up", "gray") == \
        "an orange triangle moving up on a gray background"


def test_parse_prompt_round_trips_the_template_and_paraphrases():
    rng = np.random.default_rng(0)
    for combo in all_combinations():
        assert parse_prompt(template_prompt(*combo)) == combo
        for _ in range(10):
            text = paraphrase(*combo, rng)
            assert parse_prompt(text) == combo, text


def test_paraphrases_use_synonyms_and_several_sentences():
    rng = np.random.default_rng(1)
    texts = [paraphrase("red", "circle", "left", "black", rng) for _ in range(300)]
    words = set(" ".join(texts).lower().replace(",", " ").split())
    assert {"crimson", "scarlet", "ball", "disc", "dot", "heading", "drifting", "sliding",
            "leftward", "dark"} <= words
    assert len(set(texts)) > 100
    grey = [paraphrase("blue", "square", "down", "gray", rng) for _ in range(100)]
    assert any("grey" in t for t in grey) and any("box" in t for t in grey)


@pytest.mark.parametrize("prompt", [
    "a cat playing the piano",
    "",
    "a red circle moving right",  # no background
    "a red circle and a blue square moving left on a black background",  # two objects
    "red circles moving up on a white background",  # plural: not this world
    "a red circle moving left and right on a gray background",
])
def test_parse_prompt_rejects_prompts_outside_the_world(prompt):
    assert parse_prompt(prompt) is None


def test_parse_prompt_ignores_case_and_punctuation():
    assert parse_prompt("An ORANGE box, sliding to the left; grey backdrop.") == \
        ("orange", "square", "left", "gray")


def test_held_out_split():
    held, train = held_out_combinations(), training_combinations()
    assert held == held_out_combinations()  # deterministic
    assert len(held) == len(set(held)) >= 0.1 * 216
    assert set(held) | set(train) == set(all_combinations())
    assert not set(held) & set(train)
    for i, values in enumerate(ATTRIBUTES):
        assert {c[i] for c in train} == set(values)  # every value is still trained on
        # ...and so is every pair of values, so held-out prompts are new combinations only.
        for j in range(i + 1, 4):
            assert {(c[i], c[j]) for c in train} == \
                {(a, b) for a in values for b in ATTRIBUTES[j]}


def test_random_scene():
    a = [random_scene(np.random.default_rng(5)) for _ in range(2)]
    assert a[0] == a[1]
    rng = np.random.default_rng(6)
    train = set(training_combinations())
    scenes = [random_scene(rng, training_combinations()) for _ in range(200)]
    assert all(s.combination in train for s in scenes)
    assert all(0 <= s.x < 64 and 0 <= s.y < 64 for s in scenes)
    assert len({s.combination for s in scenes}) > 50


# --- The checker: accepts the world ---------------------------------------------------------

def test_every_combination_passes_clean_and_degraded():
    rng = np.random.default_rng(0)
    for i, combo in enumerate(all_combinations()):
        clean = render(scene_for(i, combo), 16)
        for name, video in (("clean", clean), ("degraded", degrade(clean, rng))):
            result = check_video(video, combo)
            assert result.passed, f"{name} {combo}: {result.reason}"
            assert result.observed == combo


def test_h264_round_trip_passes():
    # H.264 4:2:0 halves chroma resolution: objects that differ from the background mostly in
    # chroma (yellow, purple, green on gray) are the hard cases for shape and motion.
    imageio_ffmpeg = pytest.importorskip("imageio_ffmpeg")
    ffmpeg = imageio_ffmpeg.get_ffmpeg_exe()
    for combo in [("yellow", "square", "left", "gray"), ("purple", "square", "up", "gray"),
                  ("green", "circle", "down", "gray"), ("red", "triangle", "right", "black")]:
        frames = render(Scene(*combo, x=21, y=49), 32)
        encoded = subprocess.run(
            [ffmpeg, "-loglevel", "error", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", "64x64",
             "-r", "16", "-i", "-", "-c:v", "libx264", "-crf", "23", "-pix_fmt", "yuv420p",
             "-f", "h264", "-"],
            input=frames.tobytes(), capture_output=True, check=True).stdout
        decoded = subprocess.run(
            [ffmpeg, "-loglevel", "error", "-f", "h264", "-i", "-", "-f", "rawvideo",
             "-pix_fmt", "rgb24", "-"],
            input=encoded, capture_output=True, check=True).stdout
        video = np.frombuffer(decoded, np.uint8).reshape(-1, 64, 64, 3)
        assert len(video) == 32
        result = check_video(video, combo)
        assert result.passed, f"{combo}: {result.reason}"


# --- The checker: rejects what it must ------------------------------------------------------

SCENES = [
    Scene("red", "circle", "right", "black", 62, 10),
    Scene("purple", "square", "up", "gray", 5, 1),
    Scene("yellow", "triangle", "left", "white", 33, 40),
    Scene("orange", "square", "down", "black", 20, 60),
]


@pytest.mark.parametrize("scene", SCENES, ids=lambda s: s.prompt)
@pytest.mark.parametrize("attribute", range(4), ids=["color", "shape", "direction",
                                                     "background"])
def test_rejects_each_wrong_attribute(scene, attribute):
    video = degrade(render(scene, 32), np.random.default_rng(2))
    name = ["colour", "shape", "direction", "background"][attribute]
    for wrong in ATTRIBUTES[attribute]:
        if wrong == scene.combination[attribute]:
            continue
        expected = list(scene.combination)
        expected[attribute] = wrong
        result = check_video(video, tuple(expected))
        assert not result.passed, expected
        assert name in result.reason


@pytest.mark.parametrize("combo", [("red", "circle", "right", "gray"),
                                   ("blue", "square", "up", "black"),
                                   ("green", "triangle", "down", "white")])
def test_rejects_uniform_noise(combo):
    noise = np.random.default_rng(3).integers(0, 256, (32, 64, 64, 3), dtype=np.uint8)
    assert not check_video(noise, combo).passed


def test_rejects_a_colour_switch_halfway():
    combo = ("red", "circle", "right", "black")
    first = render(Scene(*combo, x=10, y=30), 32)
    second = render(Scene("blue", "circle", "right", "black", x=42, y=30), 32)
    result = check_video(np.concatenate([first, second]), combo)
    assert not result.passed and "colour" in result.reason


def test_rejects_drift_late_in_a_long_video_window_by_window():
    # 12 s; only the last 2 s turn blue: 83% of frames are right overall, but the last 4 s
    # window is only half right, and windows are judged on their own.
    combo = ("red", "square", "left", "gray")
    video = render(Scene(*combo, x=30, y=30), 12 * FPS)
    drifted = render(Scene("blue", "square", "left", "gray", x=30, y=30), 12 * FPS)
    video[10 * FPS:] = drifted[10 * FPS:]
    result = check_video(video, combo)
    assert result.color_fraction >= 0.8
    assert result.window_passed == [True, True, False]
    assert not result.passed and "window 2" in result.reason


def test_long_clean_video_passes_every_window():
    combo = ("green", "triangle", "up", "black")
    result = check_video(render(Scene(*combo, x=3, y=3), 9 * FPS), combo)
    assert result.passed and result.window_passed == [True, True]  # the 1 s tail joins window 1


@pytest.mark.parametrize("other", [
    Scene("red", "circle", "right", "black", 40, 45),  # a twin
    Scene("blue", "square", "left", "black", 45, 20),  # a different object
])
def test_rejects_two_objects(other):
    combo = ("red", "circle", "right", "black")
    video = render(Scene(*combo, x=10, y=12), 32)
    second = render(other, 32)
    is_object = object_mask(second, "black")
    video[is_object] = second[is_object]
    result = check_video(video, combo)
    assert not result.passed and "shape" in result.reason


def test_rejects_an_object_that_does_not_move():
    combo = ("red", "circle", "right", "black")
    still = np.repeat(render(Scene(*combo, x=30, y=30), 1), 32, axis=0)
    result = check_video(still, combo)
    assert not result.passed and "direction" in result.reason


def test_rejects_an_empty_background():
    combo = ("red", "circle", "right", "black")
    empty = np.full((32, 64, 64, 3), BACKGROUNDS["black"], np.uint8)
    assert not check_video(empty, combo).passed


def test_single_frame_cannot_pass_and_bad_expectation_raises():
    combo = ("red", "circle", "right", "black")
    assert not check_video(render(Scene(*combo, x=5, y=5), 1), combo).passed
    with pytest.raises(ValueError):
        check_video(render(Scene(*combo, x=5, y=5), 4), ("pink", "circle", "right", "black"))
