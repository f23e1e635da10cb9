"""The 720p release's layout (LTX-2 VAE, 128-channel patch-(1,1,1) transformer, here at tiny sizes) on a
random SanaVideoPipeline saved by diffusers itself (tests/tiny_sana_video_720p.py): `sana-serve generate
--checkpoint DIR` picks the sana-video-2b-720p config and gives diffusers' frames for the same prompt, seed,
steps and guidance, untiled and with the same spatial tiles as diffusers' tiled decode; the 1 + 8k rule."""
from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from sana_serve.cli import main
from sana_serve.engine.config import load_config
from sana_serve.engine.load import default_config_name
from tests import tiny_sana_video_720p as tiny

PROMPT = "A red circle moving right on a black background"


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny-720p") / "SANA-Video_tiny_ltx2_diffusers"
    return {"root": root, "pipe": tiny.build(root)}


def generate(tmp_path, *args, size=(tiny.WIDTH, tiny.HEIGHT)) -> tuple[np.ndarray, dict]:
    out, report = tmp_path / "out.npy", tmp_path / "report.json"
    assert main(["generate", "--prompt", PROMPT, "--out", str(out), "--report", str(report), "--quiet",
                 "--size", f"{size[0]}x{size[1]}", *args]) == 0
    return np.load(out), json.loads(report.read_text())


def assert_same_frames(got: np.ndarray, expected: np.ndarray) -> None:
    assert got.dtype == np.uint8 and got.shape == expected.shape
    diff = np.abs(got.astype(int) - expected.astype(int))
    assert diff.max() <= 2, f"max difference {diff.max()} levels ({(diff > 2).mean():.1%} of values over 2)"
    assert expected.std() > 20  # a real picture, not a saturated one: the comparison means something


def release_config_at(tmp_path, root, **decode) -> str:
    """The 720p release config serving the tiny checkpoint, with a `decode` section."""
    data = yaml.safe_load(load_config("sana-video-2b-720p").source.read_text())
    data.update(checkpoint=str(root), name="tiny-720p", decode=decode)
    path = tmp_path / "tiny-720p.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def test_release_config_is_the_default_for_ltx2_checkpoints(ckpt):
    assert default_config_name(ckpt["root"]) == "sana-video-2b-720p"
    cfg = load_config("sana-video-2b-720p")
    assert (cfg.video.width, cfg.video.height, cfg.sampling.steps, cfg.sampling.flow_shift,
            cfg.sampling.guidance_scale) == (1280, 704, 50, 8.0, 6.0)
    assert cfg.decode.context is None and cfg.decode.tile is None  # exact whole-clip decode unless asked


def test_generate_matches_diffusers_pipeline(ckpt, tmp_path):
    got, report = generate(tmp_path, "--checkpoint", str(ckpt["root"]), "--frames", "17", "--seed", "3",
                           "--steps", "3", "--guidance", "4.5")
    expected = tiny.diffusers_frames(ckpt["pipe"], PROMPT, 17, 3, 3, 4.5)
    assert report["mode"] == "full_sequence" and report["config"] == "sana-video-2b-720p"
    assert report["frames"] == 17 and len(got) == 17
    assert [b["frames"] for b in report["blocks"]] == [1, 16]  # 3 latent frames in blocks of 2: remainder first
    assert_same_frames(got, expected)


def test_tiled_generate_matches_diffusers_tiled(ckpt, tmp_path):
    config = release_config_at(tmp_path, ckpt["root"], tile=96, tile_stride=64)
    got, _ = generate(tmp_path, "--config", config, "--frames", "9", "--seed", "5", "--steps", "2",
                      size=(128, 128))
    expected = tiny.diffusers_frames(ckpt["pipe"], PROMPT, 9, 5, 2, 6.0, tiles=(96, 64), height=128, width=128)
    untiled = tiny.diffusers_frames(ckpt["pipe"], PROMPT, 9, 5, 2, 6.0, height=128, width=128)
    assert np.abs(untiled.astype(int) - expected.astype(int)).max() > 2  # the tiles matter: the test can fail
    assert_same_frames(got, expected)


def test_frames_rule(ckpt, tmp_path, capsys):
    assert main(["generate", "--prompt", PROMPT, "--checkpoint", str(ckpt["root"]), "--frames", "13",
                 "--size", f"{tiny.WIDTH}x{tiny.HEIGHT}", "--out", str(tmp_path / "x.npy")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "1 + 8k" in err and "got 13" in err


def test_bad_decode_setting_is_one_line(ckpt, tmp_path, capsys):
    config = release_config_at(tmp_path, ckpt["root"], tile=100)
    assert main(["generate", "--prompt", PROMPT, "--config", config, "--frames", "9",
                 "--size", f"{tiny.WIDTH}x{tiny.HEIGHT}", "--out", str(tmp_path / "x.npy")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "decode.tile" in err


def test_job_that_cannot_fit_is_refused_before_it_starts(ckpt, tmp_path, capsys):
    """decode.max_gib below the decode's estimate: refused at validation (the server's 400, before any
    denoising), one line naming the settings that would make it fit."""
    config = release_config_at(tmp_path, ckpt["root"], max_gib=1e-6)
    assert main(["generate", "--prompt", PROMPT, "--config", config, "--frames", "17",
                 "--size", f"{tiny.WIDTH}x{tiny.HEIGHT}", "--out", str(tmp_path / "x.npy")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "decode.tile" in err and "decode.context" in err and "decode.max_gib" in err
    assert not (tmp_path / "x.npy").exists()


@pytest.mark.parametrize("context", [None, 1])
def test_snapshot_between_blocks_resumes_identically(ckpt, tmp_path, context):
    """A server checkpoints after every block; the LTX-2 stream decoder's clip and position travel in the
    snapshot, so a resumed rollout hands out the same remaining blocks (whole-clip and windowed decode)."""
    from sana_serve.engine import GenerationRequest, load_engine
    from sana_serve.engine.rollout import Rollout

    engine = load_engine(release_config_at(tmp_path, ckpt["root"], context=context), device="cpu")
    request = GenerationRequest(PROMPT, None, seed=4, frames=33, num_inference_steps=2, width=tiny.WIDTH,
                                height=tiny.HEIGHT)
    whole = [b.frames for b in engine.stream(request)]
    assert [len(f) for f in whole] == [1, 16, 16]
    rollout = Rollout(engine, request)
    rollout.next_block()
    resumed = Rollout.restore(engine, request, rollout.snapshot())
    rest = []
    while not resumed.done:
        rest.append(resumed.next_block().frames)
    assert len(rest) == 2 and all(np.array_equal(g, e) for g, e in zip(rest, whole[1:]))


def test_720p_resolution_bins_are_diffusers():
    from diffusers.pipelines.sana_video.pipeline_sana_video import ASPECT_RATIO_720_BIN

    from sana_serve.engine.config import resolution_bins

    assert sorted(resolution_bins(22)) == sorted((int(w), int(h)) for h, w in ASPECT_RATIO_720_BIN.values())
