"""Websocket streaming against real servers on 127.0.0.1 and a real websocket client.

Most tests run on both deployments (conftest.py `deployment`: `serve`, and `api` + `worker`; API key
required). The kill -9 test starts its own `serve`. The
tests that need knobs the command line does not have (a one-block viewer buffer, a short
realtime idle limit) run the same app in this process under uvicorn, so they can set them on
`app.state` after startup.
"""
from __future__ import annotations

import dataclasses
import json
import socket
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

import httpx
import numpy as np
import pytest
import uvicorn
import yaml
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from sana_serve.engine.video import FragmentedMp4Encoder, decode_video
from tests.server.conftest import API_KEY, PROMPT, ROOT, ServerProcess

FPS = 16


def ws_url(base: str, path: str) -> str:
    return base.replace("http://", "ws://") + path


def read_stream(ws, timeout: float = 120):
    """(block events, concatenated binary payloads, final event) of one stream."""
    events, payload = [], bytearray()
    while True:
        message = ws.recv(timeout=timeout)
        assert isinstance(message, str), "expected a JSON event before every binary message"
        event = json.loads(message)
        if event["type"] != "video.block":
            return events, bytes(payload), event
        events.append(event)
        binary = ws.recv(timeout=timeout)
        assert isinstance(binary, bytes)
        payload += binary


def open_stream(deployment, video_id: str, **query):
    params = "&".join(f"{k}={v}" for k, v in query.items())
    url = ws_url(deployment.url, f"/v1/videos/{video_id}/stream" + (f"?{params}" if params else ""))
    return connect(url, additional_headers=deployment.headers, max_size=None, open_timeout=30)


def create(client, seconds, seed=0, steps=1, prompt=PROMPT):
    r = client.post("/v1/videos", json={"prompt": prompt, "seconds": seconds, "seed": seed,
                                        "num_inference_steps": steps})
    assert r.status_code == 200, r.text
    return r.json()


def encode_and_decode(frames: np.ndarray, sizes) -> np.ndarray:
    with FragmentedMp4Encoder(64, 64, FPS, frames_per_block=32) as encoder:
        media = b"".join(encoder.encode_block(b) for b in np.split(frames, np.cumsum(sizes)[:-1]))
        return decode_video(encoder.init_segment + media)


def raw_frames(deployment, video_id) -> np.ndarray:
    frames = sorted((deployment.job_dir(video_id) / "frames").glob("*.npy"))
    return np.concatenate([np.load(p) for p in frames])


# -- WS /v1/videos/{id}/stream on both deployments ------------------------------------------
def test_live_stream_decodes_to_every_frame(deployment, client):
    video = create(client, seconds=6, seed=3)  # 3 blocks of 32 frames
    with open_stream(deployment, video["id"]) as ws:
        events, stream, end = read_stream(ws)
    assert end == {"type": "video.completed", "id": video["id"]}
    assert [e["index"] for e in events] == [0, 1, 2]
    assert [e["frame_start"] for e in events] == [0, 32, 64]
    assert [e["frame_count"] for e in events] == [32, 32, 32]
    assert [e["progress"] for e in events] == [33, 66, 100]
    frames = decode_video(stream)
    assert frames.shape == (6 * FPS, 64, 64, 3)  # exactly seconds x fps
    # The stream is exactly the encoding of what the engine produced (the raw frames are kept).
    assert np.array_equal(frames, encode_and_decode(raw_frames(deployment, video["id"]), [32, 32, 32]))
    # A completed job replays from disk: the same bytes again.
    with open_stream(deployment, video["id"]) as ws:
        replay_events, replay, replay_end = read_stream(ws)
    assert replay == stream and replay_events == events and replay_end == end


def test_resume_from_block_and_two_viewers(deployment, client):
    video = create(client, seconds=6, seed=4)
    first, second = open_stream(deployment, video["id"]), open_stream(deployment, video["id"])
    with first, second:
        # Viewer 1 reads block 0 and disconnects; viewer 2 watches the whole job meanwhile.
        e0 = json.loads(first.recv(timeout=120))
        part0 = first.recv(timeout=120)
        assert e0["index"] == 0
        first.close()
        events, whole, end = read_stream(second)
    assert end["type"] == "video.completed" and [e["index"] for e in events] == [0, 1, 2]
    with open_stream(deployment, video["id"], from_block=1) as ws:
        resumed_events, rest, _ = read_stream(ws)
    assert [e["index"] for e in resumed_events] == [1, 2]
    frames = decode_video(part0 + rest[len(_init_of(rest)):])  # the resumed payload repeats the init
    assert frames.shape == (6 * FPS, 64, 64, 3)
    assert np.array_equal(frames, decode_video(whole))
    assert decode_video(rest).shape == (4 * FPS, 64, 64, 3)  # on its own: init + blocks 1, 2


def test_resume_while_generating(deployment, client):
    video = create(client, seconds=6, seed=5, steps=2)
    with open_stream(deployment, video["id"]) as ws:
        json.loads(ws.recv(timeout=120))
        head = ws.recv(timeout=120)
    # Reconnect at block 1 while the job is (most likely) still running: no gap, no repeat.
    with open_stream(deployment, video["id"], from_block=1) as ws:
        events, rest, end = read_stream(ws)
    assert [e["index"] for e in events] == [1, 2] and end["type"] == "video.completed"
    stream = head + rest[len(_init_of(rest)):]
    assert decode_video(stream).shape == (6 * FPS, 64, 64, 3)


def _init_of(payload: bytes) -> bytes:
    """The leading ftyp+moov of a payload."""
    pos = 0
    while pos < len(payload):
        size = int.from_bytes(payload[pos:pos + 4], "big")
        if payload[pos + 4:pos + 8] == b"moof":
            return payload[:pos]
        pos += size
    return payload


def test_unknown_id_bad_from_block_and_missing_key(deployment, client):
    with open_stream(deployment, "video_" + "0" * 32) as ws:
        with pytest.raises(ConnectionClosed) as info:
            ws.recv(timeout=30)
    assert info.value.rcvd.code == 1008 and "no video" in info.value.rcvd.reason
    video = create(client, seconds=2, seed=1)
    with open_stream(deployment, video["id"], from_block=9) as ws:
        with pytest.raises(ConnectionClosed) as info:
            ws.recv(timeout=30)
    assert info.value.rcvd.code == 1008 and "from_block" in info.value.rcvd.reason
    # Without the API key the handshake is refused; ?api_key= works (browsers cannot set headers).
    url = ws_url(deployment.url, f"/v1/videos/{video['id']}/stream")
    with pytest.raises((InvalidStatus, ConnectionClosed)):
        with connect(url, open_timeout=30) as ws:
            ws.recv(timeout=30)
    with connect(url + f"?api_key={API_KEY}", max_size=None, open_timeout=30) as ws:
        events, stream, end = read_stream(ws)
    assert end["type"] == "video.completed" and decode_video(stream).shape == (2 * FPS, 64, 64, 3)


def test_cancelled_job_ends_the_stream(deployment, client):
    video = create(client, seconds=6, seed=6, steps=2)
    with open_stream(deployment, video["id"]) as ws:
        assert json.loads(ws.recv(timeout=120))["index"] == 0
        ws.recv(timeout=120)
        assert client.delete(f"/v1/videos/{video['id']}").status_code == 200
        while True:
            message = ws.recv(timeout=60)
            if isinstance(message, str) and json.loads(message)["type"] != "video.block":
                end = json.loads(message)
                break
    assert end["type"] == "video.failed" and end["error"]["code"] in ("cancelled", "deleted")


@pytest.mark.processes
def test_stream_continues_across_a_kill9(tmp_path, test_config):
    """SIGKILL after block 0 was watched, restart, reconnect with from_block=1: the stitched
    stream has every frame once and equals an uninterrupted run's stream, pixel for pixel
    (the resumed encoder continues the fMP4 timeline of the stored init segment)."""
    srv = ServerProcess(tmp_path / "data", test_config, extra=["--max-batch", "1"])
    body = {"prompt": PROMPT, "seconds": 6, "num_inference_steps": 2, "seed": 13}  # 3 blocks
    srv.start()
    try:
        with srv.client() as c:
            vid = c.post("/v1/videos", json=body).json()["id"]
        with open_stream(srv, vid) as ws:
            assert json.loads(ws.recv(timeout=120))["index"] == 0
            head = ws.recv(timeout=120)
        srv.kill()
        on_disk = list((srv.data_dir / "videos" / vid / "segments").glob("*.m4s"))
        assert 1 <= len(on_disk) < 3  # so the restarted process encodes with a fresh encoder
        srv.start()
        with open_stream(srv, vid, from_block=1) as ws:
            events, rest, end = read_stream(ws)
        assert [e["index"] for e in events] == [1, 2] and end["type"] == "video.completed"
        stitched = decode_video(head + rest[len(_init_of(rest)):])
        assert stitched.shape == (6 * FPS, 64, 64, 3)
        with srv.client() as c:
            ref = c.post("/v1/videos", json=body).json()["id"]
        with open_stream(srv, ref) as ws:
            _, reference, _ = read_stream(ws)
        assert np.array_equal(stitched, decode_video(reference))
        assert _init_of(rest) == _init_of(head) == _init_of(reference)
    finally:
        srv.stop()


# -- an in-process server for the knobs ------------------------------------------------------
class InProcessServer:
    def __init__(self, data_dir: Path, config: Path, **settings):
        from sana_serve.server.app import create_app
        from sana_serve.server.config import ServerSettings

        self.settings = ServerSettings(config=str(config), data_dir=data_dir, host="127.0.0.1", torch_threads=2,
                                       log_format="text", **settings)
        from sana_serve.server import embedded

        self.app = create_app(embedded.build(self.settings), self.settings)
        # Loopback TCP autotunes a socket's send buffer up to 4 MB, far more than a test video:
        # a small, fixed one (inherited by accepted connections) plays the part of a slow link,
        # so a viewer that stops reading really does stall the server's sends.
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 32 * 1024)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.data_dir = data_dir
        self.headers = {}
        self.server = uvicorn.Server(uvicorn.Config(self.app, log_config=None, ws_ping_interval=None))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def start(self, timeout=180):
        self.thread.start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError("in-process server not ready")

    def stop(self):
        self.server.should_exit = True
        self.thread.join(60)
        self.sock.close()


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    d = tmp_path_factory.mktemp("ws-local")
    src = ROOT / "configs" / "shapes-tiny.yaml"
    data = yaml.safe_load(src.read_text())
    # Random weights, not the trained model: their noisy frames encode to ~100 kB per block, enough
    # to fill a slow viewer's socket (the trained model's flat backgrounds make segments of a few kB).
    data.pop("checkpoint", None)
    data["limits"] = {**data["limits"], "max_seconds": 30, "max_steps": 2}
    config = d / "config.yaml"
    config.write_text(yaml.safe_dump(data))
    s = InProcessServer(d / "data", config, max_batch=4, max_sessions=1, keep_frames=True).start()
    yield s
    s.stop()


@pytest.fixture
def local_client(local):
    with httpx.Client(base_url=local.url, timeout=60) as c:
        yield c


def slow_socket(url: str) -> socket.socket:
    """A TCP connection with a tiny receive window: a viewer on a very slow link."""
    parsed = urlparse(url)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((parsed.hostname, parsed.port))
    return sock


def test_slow_viewer_is_closed_with_a_reason_and_the_job_completes(local, local_client):
    hub = local.app.state.parts.hub
    hub.max_buffered_blocks = 1
    try:
        video = create(local_client, seconds=12, seed=8)  # 6 blocks, ~100 kB of segment each
        url = ws_url(local.url, f"/v1/videos/{video['id']}/stream")
        # max_queue=1: the client library stops reading the socket once a message waits unread.
        with connect(url, sock=slow_socket(url), max_size=None, max_queue=1, open_timeout=30) as slow:
            with open_stream(local, video["id"]) as fast:  # a healthy viewer of the same job
                events, stream, end = read_stream(fast)
            assert end["type"] == "video.completed" and len(events) == 6
            assert decode_video(stream).shape == (12 * FPS, 64, 64, 3)
            # The slow viewer was cut off with a reason; what it received is a valid prefix.
            received, close = [], None
            try:
                while True:
                    received.append(slow.recv(timeout=30))
            except ConnectionClosed as e:
                close = e.rcvd
        assert close is not None and close.code == 1013, close
        assert "too slow" in close.reason and "from_block=" in close.reason
        resume_at = int(close.reason.rsplit("from_block=", 1)[1])
        blocks = [json.loads(m)["index"] for m in received if isinstance(m, str)]
        complete = sum(isinstance(m, bytes) for m in received)  # blocks received with their segment
        assert blocks == list(range(len(blocks))) and complete < 6
        assert complete - 1 <= resume_at <= complete  # no gap; at most the last whole block again
        assert decode_video(b"".join(m for m in received if isinstance(m, bytes))).shape[0] == 32 * complete
        # ...and it can resume from there.
        with open_stream(local, video["id"], from_block=resume_at) as ws:
            rest_events, _, rest_end = read_stream(ws)
        assert [e["index"] for e in rest_events] == list(range(resume_at, 6)) and rest_end["type"] == "video.completed"
        assert hub.viewers(video["id"]) == 0
    finally:
        hub.max_buffered_blocks = 8


# -- WS /v1/realtime -------------------------------------------------------------------------
def realtime(server):
    return connect(ws_url(server.url, "/v1/realtime"), additional_headers=server.headers, max_size=None,
                   open_timeout=30)


def next_of(ws, kind: str, timeout: float = 60) -> dict:
    """The next JSON event of type `kind`, skipping binary messages and other events."""
    while True:
        message = ws.recv(timeout=timeout)
        if isinstance(message, str):
            event = json.loads(message)
            if event["type"] == kind:
                return event
            assert event["type"] != "error", event


def run_session(server, blocks: int, update_after: int | None = None, seed: int = 11):
    """Frames of the first `blocks` blocks of a realtime session; optionally a prompt.update."""
    payload = bytearray()
    with realtime(server) as ws:
        ws.send(json.dumps({"type": "session.start", "prompt": PROMPT, "seed": seed, "num_inference_steps": 1}))
        started = next_of(ws, "session.started")
        assert started["seed"] == seed and started["fps"] == FPS and started["frames_per_block"] == 32
        events = []
        while len(events) < blocks:
            message = ws.recv(timeout=60)
            if isinstance(message, bytes):
                payload += message
                continue
            event = json.loads(message)
            if event["type"] == "video.block":
                events.append(event)
                if update_after is not None and event["index"] == update_after:
                    ws.send(json.dumps({"type": "prompt.update",
                                        "prompt": "a green square moving up on a white background"}))
            else:
                assert event["type"] == "prompt.updated", event
        payload += ws.recv(timeout=60)  # the last block's segment
        ws.send(json.dumps({"type": "session.stop"}))
        assert next_of(ws, "session.stopped")["reason"] == "stopped"
    assert [e["index"] for e in events] == list(range(blocks))
    assert [e["frame_start"] for e in events] == [32 * i for i in range(blocks)]
    frames = decode_video(bytes(payload))
    assert frames.shape == (32 * blocks, 64, 64, 3)
    return frames


def test_realtime_prompt_update_changes_the_following_blocks(local):
    plain = run_session(local, blocks=3)
    steered = run_session(local, blocks=3, update_after=0)
    # Same seed: block 0 is identical; the update lands at block 1 or 2 (the next block to be
    # started), and from then on the video differs.
    assert np.array_equal(plain[:32], steered[:32])
    assert not np.array_equal(plain[64:], steered[64:])


def test_realtime_bad_messages_limits_and_idle(local):
    local.app.state.settings = dataclasses.replace(local.settings, realtime_idle_seconds=2)
    try:
        with realtime(local) as ws:
            ws.send("not json")
            assert next_of(ws, "error")["error"]["code"] == "invalid_json"
            ws.send(json.dumps({"type": "prompt.update", "prompt": "x"}))
            assert next_of(ws, "error")["error"]["code"] == "no_session"
            ws.send(json.dumps({"type": "session.start", "prompt": ""}))
            error = next_of(ws, "error")["error"]
            assert error["param"] == "prompt"
            ws.send(json.dumps({"type": "session.start", "prompt": PROMPT, "num_inference_steps": 99}))
            assert next_of(ws, "error")["error"]["code"] == "invalid_value"
            ws.send(json.dumps({"type": "teleport"}))
            assert next_of(ws, "error")["error"]["code"] == "unknown_type"
            ws.send(json.dumps({"type": "session.start", "prompt": PROMPT, "seed": 1, "num_inference_steps": 1}))
            next_of(ws, "session.started")
            # max_sessions=1: a second session is refused with a reason
            with realtime(local) as other:
                other.send(json.dumps({"type": "session.start", "prompt": PROMPT}))
                assert next_of(other, "error")["error"]["code"] == "too_many_sessions"
                with pytest.raises(ConnectionClosed) as info:
                    other.recv(timeout=30)
                assert info.value.rcvd.code == 1013
            # No client message for 2 s: the session is stopped and the socket closed.
            stopped = next_of(ws, "session.stopped", timeout=30)
            assert stopped["reason"] == "idle_timeout"
            with pytest.raises(ConnectionClosed) as info:
                while True:
                    ws.recv(timeout=30)
            assert info.value.rcvd.code == 1001
        # The slot is free again.
        deadline = time.monotonic() + 30
        while local.app.state.parts.runner.worker.active_count()["session"] and time.monotonic() < deadline:
            time.sleep(0.1)
        assert local.app.state.parts.runner.worker.active_count()["session"] == 0
    finally:
        local.app.state.settings = local.settings


def test_realtime_slow_viewer_is_closed_and_its_slot_freed(local):
    local.app.state.settings = dataclasses.replace(local.settings, realtime_buffer_blocks=1)
    try:
        url = ws_url(local.url, "/v1/realtime")
        with connect(url, sock=slow_socket(url), max_size=None, max_queue=1, open_timeout=30) as ws:
            ws.send(json.dumps({"type": "session.start", "prompt": PROMPT, "seed": 2, "num_inference_steps": 1}))
            time.sleep(8)  # read nothing while the endless session produces ~100 kB blocks
            close = None
            try:
                while True:
                    ws.recv(timeout=30)
            except ConnectionClosed as e:
                close = e.rcvd
        assert close is not None and close.code == 1013 and "too slow" in close.reason, close
        deadline = time.monotonic() + 30
        while local.app.state.parts.runner.worker.active_count()["session"] and time.monotonic() < deadline:
            time.sleep(0.1)
        assert local.app.state.parts.runner.worker.active_count()["session"] == 0
    finally:
        local.app.state.settings = local.settings
