"""The Shapes world: renderer, prompts and quality checker for the embedded default model.

numpy only. `world` is the spec made executable (palette, geometry, rendering, prompts, the
held-out split); `checker` judges any video against a prompt from that spec alone.
"""

from .checker import CheckResult, FrameReading, check_video, read_frames
from .world import (
    BACKGROUNDS,
    COLORS,
    DIRECTIONS,
    FPS,
    FRAME_SIZE,
    SHAPES,
    SPEED_PX_PER_FRAME,
    Combination,
    Scene,
    all_combinations,
    held_out_combinations,
    paraphrase,
    parse_prompt,
    random_scene,
    render,
    shape_area,
    shape_mask,
    template_prompt,
    training_combinations,
)

__all__ = [
    "BACKGROUNDS", "COLORS", "DIRECTIONS", "FPS", "FRAME_SIZE", "SHAPES", "SPEED_PX_PER_FRAME",
    "Combination", "Scene", "render", "shape_mask", "shape_area",
    "all_combinations", "held_out_combinations", "training_combinations", "random_scene",
    "template_prompt", "paraphrase", "parse_prompt",
    "CheckResult", "FrameReading", "check_video", "read_frames",
]
