"""`serve --precision nvfp4`: the server quantizes the transformer on load and serves videos with it."""
import re

import pytest

from sana_serve.engine.video import decode_video
from tests.server.conftest import PROMPT, ServerProcess, finished, wait_for


@pytest.mark.processes
def test_serve_with_nvfp4_weights(tmp_path, test_config):
    srv = ServerProcess(tmp_path / "data", test_config, extra=["--precision", "nvfp4", "--max-batch", "2"])
    srv.start()
    try:
        with srv.client() as c:
            vid = c.post("/v1/videos", json={"prompt": PROMPT, "seconds": 1, "num_inference_steps": 1,
                                             "seed": 3}).json()["id"]
            assert wait_for(c, vid, finished, timeout=180)["status"] == "completed"
            frames = decode_video(c.get(f"/v1/videos/{vid}/content").content)
            assert frames.shape == (16, 64, 64, 3)
    finally:
        srv.stop()
    # The engine said it packed the weights (load_engine logs the resident bytes of NVFP4 layers).
    assert re.search(r"\d+ NVFP4 layers hold", srv.log_tail(200000)), srv.log_tail()
