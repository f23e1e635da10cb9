"""The HTTP server on a tiny 720p-layout SanaVideoPipeline (LTX-2 VAE, tests/tiny_sana_video_720p.py),
served with the sana-video-2b-720p release config: a job streams block by block over the websocket
(the non-causal decoder handing out the whole-clip decode in blocks), the segments are one playable
video, the frames equal diffusers' pipeline; a job whose decode cannot fit is a 400 naming the setting."""
from __future__ import annotations

import numpy as np
import pytest
import yaml

from sana_serve.engine.config import load_config
from sana_serve.engine.video import decode_video
from tests import tiny_sana_video_720p as tiny
from tests.server.conftest import ServerProcess, finished, wait_for
from tests.server.test_ws import open_stream, raw_frames, read_stream

PROMPT = "A red circle moving right on a black background"
SIZE = f"{tiny.WIDTH}x{tiny.HEIGHT}"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny-720p-server")
    root = d / "SANA-Video_tiny_ltx2_diffusers"
    pipe = tiny.build(root)
    data = yaml.safe_load(load_config("sana-video-2b-720p").source.read_text())
    data.update(name="tiny-720p", checkpoint=str(root), video={"width": tiny.WIDTH, "height": tiny.HEIGHT, "fps": 16},
                decode={"max_gib": 0.01})  # 10 MiB: 33 frames at 96x64 (~5 MiB) fit, 153 (~25 MiB) do not
    config = d / "tiny-720p.yaml"
    config.write_text(yaml.safe_dump(data))
    server = ServerProcess(d / "data", config, extra=["--keep-frames"]).start()
    try:
        yield server, pipe
    finally:
        server.stop()


def test_job_streams_block_by_block_with_diffusers_frames(served):
    server, pipe = served
    with server.client() as client:
        r = client.post("/v1/videos", json={"prompt": PROMPT, "size": SIZE, "frames": 33, "seed": 3,
                                            "num_inference_steps": 2, "guidance_scale": 4.5})
        assert r.status_code == 200, r.text
        video = r.json()
        with open_stream(server, video["id"]) as ws:
            events, stream, end = read_stream(ws)
        assert end["type"] == "video.completed", end
        done = wait_for(client, video["id"], finished)
    # 5 latent frames denoised together, handed out in blocks of 2 (remainder first): 1 + 16 + 16 frames
    assert [(e["index"], e["frame_start"], e["frame_count"]) for e in events] == [(0, 0, 1), (1, 1, 16), (2, 17, 16)]
    assert decode_video(stream).shape == (33, tiny.HEIGHT, tiny.WIDTH, 3)
    expected = tiny.diffusers_frames(pipe, PROMPT, 33, 3, 2, 4.5)
    assert np.abs(raw_frames(server, done["id"]).astype(int) - expected.astype(int)).max() <= 2


def test_a_job_that_cannot_fit_is_a_400_before_it_starts(served):
    server, _ = served
    with server.client() as client:
        before = len(client.get("/v1/videos").json()["data"])
        r = client.post("/v1/videos", json={"prompt": PROMPT, "size": SIZE, "frames": 153})
        assert r.status_code == 400, r.text
        message = r.json()["error"]["message"]
        assert "decode.tile" in message and "decode.context" in message
        assert len(client.get("/v1/videos").json()["data"]) == before  # nothing was queued
