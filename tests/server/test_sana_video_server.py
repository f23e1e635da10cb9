"""The HTTP server on the tiny diffusers SanaVideoPipeline checkpoint (tests/tiny_sana_video.py), in both
modes: a full-sequence server (bidirectional SANA-Video settings) and a block-causal one (LongSANA's).
Jobs and websocket streaming work the same for both; the full-sequence server's video equals diffusers'
pipeline for the same request; an endless realtime session is refused on it with an HTTP 4xx."""
from __future__ import annotations

import json

import numpy as np
import pytest
from websockets.exceptions import InvalidStatus

from sana_serve.engine.video import decode_video
from tests import tiny_sana_video as tiny
from tests.engine.test_sana_video_checkpoint import PROMPT, longlive_reference
from tests.server.conftest import ServerProcess, finished, wait_for
from tests.server.test_ws import next_of, open_stream, raw_frames, read_stream, realtime

SIZE = f"{tiny.WIDTH}x{tiny.HEIGHT}"


@pytest.fixture(scope="module")
def servers(tiny_sana_video_configs, tmp_path_factory):
    started = {}
    try:
        for mode, config in tiny_sana_video_configs.items():
            started[mode] = ServerProcess(tmp_path_factory.mktemp(mode) / "data", config,
                                          extra=["--keep-frames", "--max-batch", "2"]).start()
        yield started
    finally:
        for s in started.values():
            s.stop()


def run_job(server, **body) -> tuple[dict, list[dict], bytes]:
    with server.client() as client:
        r = client.post("/v1/videos", json={"prompt": PROMPT, "size": SIZE, **body})
        assert r.status_code == 200, r.text
        video = r.json()
        with open_stream(server, video["id"]) as ws:
            events, stream, end = read_stream(ws)
        assert end["type"] == "video.completed", end
        done = wait_for(client, video["id"], finished)
        assert done["status"] == "completed" and done["progress"] == 100
    return done, events, stream


def test_full_sequence_job_streams_diffusers_frames(servers, tiny_sana_video):
    server = servers["full_sequence"]
    done, events, stream = run_job(server, frames=25, seed=3, num_inference_steps=4, guidance_scale=4.5)
    # 7 latent frames denoised together, then handed out as the causal VAE decodes them: 1 + 2 + 2 + 2
    assert [(e["index"], e["frame_start"], e["frame_count"]) for e in events] == [(0, 0, 1), (1, 1, 8), (2, 9, 8),
                                                                                   (3, 17, 8)]
    assert done["num_blocks"] == 4 and done["size"] == SIZE
    assert decode_video(stream).shape == (25, tiny.HEIGHT, tiny.WIDTH, 3)  # the segments are one playable video
    got = raw_frames(server, done["id"])
    expected = tiny.diffusers_frames(tiny_sana_video["pipe"], PROMPT, 25, 3, 4, 4.5)
    assert np.abs(got.astype(int) - expected.astype(int)).max() <= 2


def test_block_causal_job_streams_the_longsana_video(servers, tiny_sana_video):
    server = servers["block_causal"]
    done, events, stream = run_job(server, frames=25, seed=5)
    assert [e["frame_count"] for e in events] == [1, 8, 8, 8] and done["num_blocks"] == 4
    assert decode_video(stream).shape == (25, tiny.HEIGHT, tiny.WIDTH, 3)
    expected = longlive_reference(tiny_sana_video["pipe"], PROMPT, 25, 5, chunk=2)
    assert np.abs(raw_frames(server, done["id"]).astype(int) - expected.astype(int)).max() <= 2


def test_seconds_map_to_the_nearest_valid_frame_count(servers):
    done, events, _ = run_job(servers["block_causal"], seconds=1.3, seed=1)  # 20.8 frames -> 21 = 1 + 4*5
    assert sum(e["frame_count"] for e in events) == 21


@pytest.mark.parametrize("mode", ["full_sequence", "block_causal"])
def test_bad_frames_and_sizes_are_400_with_the_rule(servers, mode):
    with servers[mode].client() as client:
        r = client.post("/v1/videos", json={"prompt": PROMPT, "size": SIZE, "frames": 24})
        assert r.status_code == 400
        err = r.json()["error"]
        assert err["param"] == "frames" and "1 + 4k" in err["message"] and "got 24" in err["message"]
        r = client.post("/v1/videos", json={"prompt": PROMPT, "frames": 9, "seconds": 2})
        assert r.status_code == 400 and r.json()["error"]["param"] == "frames"
        r = client.post("/v1/videos", json={"prompt": PROMPT, "frames": 9, "size": "80x32"})
        assert r.status_code == 400 and r.json()["error"]["param"] == "size"
        assert ("multiples of 32" if mode == "full_sequence" else SIZE) in r.json()["error"]["message"]


def test_realtime_is_refused_on_full_sequence_and_runs_on_block_causal(servers):
    with pytest.raises(InvalidStatus) as refused:
        with realtime(servers["full_sequence"]):
            pass
    response = refused.value.response
    assert response.status_code == 409
    error = json.loads(response.body)["error"]
    assert error["code"] == "realtime_unsupported" and "full_sequence" in error["message"]

    with realtime(servers["block_causal"]) as ws:
        ws.send(json.dumps({"type": "session.start", "prompt": PROMPT, "seed": 2}))
        started = next_of(ws, "session.started")
        assert (started["width"], started["height"]) == (tiny.WIDTH, tiny.HEIGHT)
        block = next_of(ws, "video.block")
        assert block["index"] == 0 and block["frame_count"] == 1 + 4 * (2 - 1)  # the first latent frame alone
        ws.send(json.dumps({"type": "session.stop"}))


def test_full_sequence_progress_moves_while_denoising(servers):
    """All blocks of a full-sequence job finish together at the end of denoising: the video object's
    progress moves per denoising step before any block exists."""
    with servers["full_sequence"].client() as client:
        r = client.post("/v1/videos", json={"prompt": PROMPT, "size": SIZE, "frames": 9, "num_inference_steps": 50})
        assert r.status_code == 200, r.text
        seen = []
        video = wait_for(client, r.json()["id"], lambda v: (seen.append((v["progress"], v["blocks_completed"]))
                                                            or finished(v)), interval=0.01)
        assert video["status"] == "completed"
    before_any_block = [p for p, blocks in seen if blocks == 0]
    assert any(0 < p < 100 for p in before_any_block), seen
    assert [p for p, _ in seen] == sorted(p for p, _ in seen)  # never goes backwards
