"""The shipped built-in model (models/shapes-tiny): it is what the default config loads, it fits
the size budget, its card lists the held-out combinations, and its videos show the asked scene."""
import json
from pathlib import Path

import numpy as np

from sana_serve.engine import GenerationRequest
from sana_serve.shapes import check_video, held_out_combinations

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "models" / "shapes-tiny"


def test_the_default_config_loads_the_shipped_checkpoint(engine):
    assert engine.config.checkpoint == MODEL.resolve()
    index = json.loads((MODEL / "model_index.json").read_text())
    assert set(index) >= {"transformer", "vae"}
    size = sum(f.stat().st_size for f in MODEL.rglob("*") if f.is_file())
    assert size <= 30 * 2**20, f"{size / 2**20:.1f} MB"


def test_the_model_card_lists_every_held_out_combination():
    card = (MODEL / "README.md").read_text()
    for combo in held_out_combinations():
        assert " / ".join(combo) in card, combo


def test_generated_videos_pass_the_shapes_checker(engine):
    """The shipped model's videos show the asked scene (eval, 48 template prompts: 88 % pass every
    check; background right in every frame, colour in 98 % of frames). Six fixed cases: most pass
    every check of the checker, and every one has the asked background and colour."""
    from sana_serve.shapes.eval import build_cases

    passed = []
    for case in build_cases("template", limit=6):
        frames = np.concatenate([b.frames for b in engine.stream(
            GenerationRequest(case.prompt, seconds=case.seconds, seed=case.seed))])
        assert frames.shape == (64, 64, 64, 3)
        verdict = check_video(frames, case.combo)
        assert verdict.background_fraction == 1.0, (case.prompt, verdict.reason)
        assert verdict.color_fraction >= 0.8, (case.prompt, verdict.reason)
        passed.append(verdict.passed)
    assert sum(passed) >= 3, passed
