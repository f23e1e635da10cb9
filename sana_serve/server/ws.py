"""Websocket streaming and the playground page.

`router` (included by server.app.create_app) holds:
- `WS /v1/videos/{id}/stream[?from_block=k]`: per block a JSON text event
  `{"type":"video.block","id","index","frame_start","frame_count","num_blocks","progress"}` and
  then one binary message, the block's fragmented-MP4 media segment; the first binary message
  of a connection carries the init segment in front. Then `{"type":"video.completed"}` or
  `{"type":"video.failed","error":{code,message}}` and a normal close. Blocks come from
  disk (finished jobs, or the part of a running job before the viewer joined) and then live
  from the BlockHub, so `from_block` resumes without gaps. A viewer that falls too far behind
  is closed with code 1013 and a reason naming the block to resume from; the job goes on.
- `WS /v1/realtime`: an endless interactive session (protocol in `realtime`'s docstring).
- `GET /` and `GET /static/{name}`: the playground page (sana_serve/server/static/, no build step).

Authentication (API keys, `Authorization: Bearer` or `?api_key=` for browsers, which cannot
set headers on a websocket) is enforced for every websocket by server.app's Guard.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import threading
from pathlib import Path
from typing import Optional

import numpy as np
from fastapi import APIRouter, WebSocket
from fastapi.responses import FileResponse, Response
from starlette.websockets import WebSocketDisconnect, WebSocketState

from sana_serve.engine.video import FragmentedMp4Encoder
from sana_serve.server.hub import CLOSE_TOO_SLOW, StreamClosed, _Buffer
from sana_serve.server.outputs import block_event

log = logging.getLogger("sana_serve.ws")

router = APIRouter()

STATIC_DIR = Path(__file__).parent / "static"
_STATIC_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                 ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml", ".png": "image/png"}

CLOSE_NORMAL = 1000
CLOSE_POLICY = 1008  # bad request: unknown id, bad parameter
CLOSE_GOING_AWAY = 1001  # idle timeout, server shutting down
JOB_POLL_SECONDS = 2.0  # how often a stream re-checks that its job still exists

# Realtime defaults; override per server with ServerSettings.extra.
REALTIME_IDLE_SECONDS = 120.0  # no client message for this long ends the session
REALTIME_MAX_MESSAGE_BYTES = 16 * 1024
REALTIME_BUFFER_BLOCKS = 4


def _setting(ws: WebSocket, name: str, default):
    settings = getattr(ws.app.state, "settings", None)
    extra = getattr(settings, "extra", None) or {}
    return extra.get(name, default)


async def _close(ws: WebSocket, code: int, reason: str) -> None:
    """Close with a reason (websocket reasons are limited to 123 bytes), never hanging."""
    reason = reason.encode()[:123].decode("utf-8", "ignore")
    if ws.application_state == WebSocketState.DISCONNECTED or ws.client_state == WebSocketState.DISCONNECTED:
        return
    with contextlib.suppress(Exception):
        await asyncio.wait_for(ws.close(code=code, reason=reason), timeout=10)


async def _send_error(ws: WebSocket, message: str, code: str, param: Optional[str] = None,
                      type: str = "invalid_request_error") -> None:
    await ws.send_text(json.dumps({"type": "error", "error": {"message": message, "type": type,
                                                              "param": param, "code": code}}))


async def _drain_client(ws: WebSocket) -> None:
    """Read (and ignore) what a viewer sends until it disconnects: how a disconnect is noticed."""
    with contextlib.suppress(WebSocketDisconnect, RuntimeError):
        while True:
            message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                return


# -- WS /v1/videos/{id}/stream ---------------------------------------------------------------
@router.websocket("/v1/videos/{video_id}/stream")
async def stream_video(ws: WebSocket, video_id: str):
    from sana_serve.server.hub import _Replay
    from sana_serve.server.schemas import VIDEO_ID

    await ws.accept()
    state = ws.app.state
    store, hub = state.store, state.hub
    raw_from = ws.query_params.get("from_block", "0")
    try:
        from_block = int(raw_from)
    except ValueError:
        from_block = -1
    job = await asyncio.to_thread(store.get, video_id) if VIDEO_ID.fullmatch(video_id) else None
    if job is None:
        return await _close(ws, CLOSE_POLICY, f"no video with id {video_id[:60]!r}")
    if not 0 <= from_block <= job.num_blocks:
        return await _close(ws, CLOSE_POLICY, f"from_block must be an integer between 0 and {job.num_blocks}, "
                                              f"got {raw_from[:20]!r}")
    if job.status in ("queued", "in_progress"):
        if hub is None:
            return await _close(ws, 1011, "live streaming is not available on this server")
        source = hub.subscribe(job.id, from_block)
    else:  # finished: replay whatever is on disk, then how it ended
        if job.status == "completed":
            end = {"type": "video.completed", "id": job.id}
        else:
            end = {"type": "video.failed", "id": job.id,
                   "error": {"code": job.error_code or job.status, "message": job.error_message or f"the job was {job.status}"}}
        source = _replay_finished(_Replay(state.files.replay_source(job.id), job.id, from_block), end)

    gauge = _active_streams_gauge("job")
    gauge.inc()
    reader = asyncio.create_task(_drain_client(ws))
    watch = asyncio.create_task(_watch_job(store, job.id))
    pump = asyncio.create_task(_pump(ws, source))
    tasks = {reader, watch, pump}
    overflow = None
    if hasattr(source, "overflowed"):  # live: a viewer stuck in a send is cut off from here
        overflow = asyncio.create_task(source.overflowed())
        tasks.add(overflow)
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        if overflow is not None and overflow in done:
            closed = overflow.result()
            pump.cancel()
            log.info("stream viewer cut off: %s", closed.reason, extra={"job_id": job.id})
            await _close(ws, closed.code, closed.reason)
        elif pump in done:
            error = pump.exception()
            if isinstance(error, StreamClosed):
                log.info("stream viewer cut off: %s", error.reason, extra={"job_id": job.id})
                await _close(ws, error.code, error.reason)
            elif error is not None and not isinstance(error, (WebSocketDisconnect, OSError, RuntimeError)):
                log.error("stream failed", exc_info=error, extra={"job_id": job.id})
                await _close(ws, 1011, "internal error while streaming")
            else:
                await _close(ws, CLOSE_NORMAL, "")
        elif watch in done:  # the job vanished (deleted, expired) without an end event
            with contextlib.suppress(Exception):
                await ws.send_text(json.dumps({"type": "video.failed", "id": job.id, "error": {
                    "code": "deleted", "message": "the video was deleted"}}))
            await _close(ws, CLOSE_NORMAL, "the video was deleted")
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        with contextlib.suppress(Exception):
            await source.aclose()
        gauge.dec()


async def _replay_finished(replay, end: dict):
    async for item in replay.from_disk():
        yield item
    yield end, None


async def _pump(ws: WebSocket, source) -> None:
    """Send (event, payload) pairs until the end event."""
    async for event, payload in source:
        await ws.send_text(json.dumps(event))
        if payload is None:  # the end event
            return
        await ws.send_bytes(payload)


async def _watch_job(store, job_id: str) -> None:
    """Return when the job's record is gone (deleted without the hub hearing of it)."""
    while True:
        await asyncio.sleep(JOB_POLL_SECONDS)
        if await asyncio.to_thread(store.get, job_id) is None:
            return


def _active_streams_gauge(kind: str):
    """server.metrics' open-streams gauge for `kind` ("job" | "realtime")."""
    from sana_serve.server.metrics import ACTIVE_STREAMS

    return ACTIVE_STREAMS.labels(kind)


# -- WS /v1/realtime ---------------------------------------------------------------------------
class _RealtimeSession:
    """Glue between a worker SessionHandle (blocks arrive on the worker thread) and one socket.

    Each block is encoded to an fMP4 segment right on the worker thread (milliseconds for the
    built-in model) and queued in a bounded buffer for the socket; a client that cannot keep
    up is cut off instead of holding frames in memory.
    """

    def __init__(self, loop, width: int, height: int, fps: float, frames_per_block: int, buffer_blocks: int):
        self.buffer = _Buffer(loop, buffer_blocks, 64 << 20)
        self.encoder = FragmentedMp4Encoder(width, height, fps, frames_per_block)
        self.handle = None
        self.id: Optional[str] = None
        self._init_sent = False
        self._lock = threading.Lock()

    def on_block(self, block) -> None:  # worker thread
        with self._lock:
            if self.encoder is None:
                return
            segment = self.encoder.encode_block(np.ascontiguousarray(block.frames))
            if not self._init_sent:
                segment = self.encoder.init_segment + segment
                self._init_sent = True
        session_id = self.id or (self.handle.id if self.handle is not None else None)
        event = dict(block_event(block.index, block.frame_start, block.frame_count, None), id=session_id)
        self.buffer.offer((event, segment), size=len(segment))

    def on_end(self, error: Optional[str]) -> None:  # worker thread
        self.buffer.offer(("end", error), always=True)

    def close(self) -> None:
        with self._lock:
            if self.encoder is not None:
                self.encoder.close()
                self.encoder = None


def _parse_start(msg: dict):
    """session.start fields -> GenerationRequest kwargs; raises ValueError(param, message)."""
    prompt = msg.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise _BadField("prompt", "prompt must be a non-empty string")
    seed = msg.get("seed")
    if seed is None:
        seed = secrets.randbelow(2**31)
    elif not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**63:
        raise _BadField("seed", "seed must be a non-negative integer")
    negative = msg.get("negative_prompt", "")
    if not isinstance(negative, str):
        raise _BadField("negative_prompt", "negative_prompt must be a string")
    steps = msg.get("num_inference_steps")
    if steps is not None and (not isinstance(steps, int) or isinstance(steps, bool)):
        raise _BadField("num_inference_steps", "num_inference_steps must be an integer")
    guidance = msg.get("guidance_scale")
    if guidance is not None and (not isinstance(guidance, (int, float)) or isinstance(guidance, bool)):
        raise _BadField("guidance_scale", "guidance_scale must be a number")
    return dict(prompt=prompt, seconds=None, seed=seed, negative_prompt=negative,
                num_inference_steps=steps, guidance_scale=None if guidance is None else float(guidance))


class _BadField(ValueError):
    def __init__(self, param: Optional[str], message: str):
        super().__init__(message)
        self.param = param


@router.websocket("/v1/realtime")
async def realtime(ws: WebSocket):
    """An endless, steerable video stream.

    Client -> server (JSON text messages):
      {"type":"session.start","prompt":P, "seed"?, "negative_prompt"?, "num_inference_steps"?,
       "guidance_scale"?}
      {"type":"prompt.update","prompt":P}      the next block follows P; the state keeps the scene
      {"type":"session.stop"}
      {"type":"ping"}                          counts as activity for the idle limit (answered with pong)
    Server -> client:
      {"type":"session.started","session_id","seed","width","height","fps","frames_per_block"}
      per block {"type":"video.block","id","index","frame_start","frame_count","progress":null}
        and one binary fMP4 segment (the first one with the init segment in front)
      {"type":"prompt.updated","prompt":P}     accepted; effective from the next block
      {"type":"session.stopped","reason":...}  then the socket closes (1000, or 1001 when idle)
      {"type":"error","error":{message,type,param,code}}  a bad message; the session goes on
    Limits: `max_sessions` concurrent sessions (then an error and close 1013); a session with
    no client message for `realtime_idle_seconds` is stopped; messages above 16 KiB are refused.
    """
    from sana_serve.engine.rollout import FULL_SEQUENCE_ENDLESS, GenerationRequest
    from sana_serve.server.worker import Busy

    state = ws.app.state
    if state.model_config.sampling.mode == "full_sequence":  # refused before the handshake, as plain HTTP
        from fastapi.responses import JSONResponse

        await ws.send_denial_response(JSONResponse(status_code=409, content={"error": {
            "message": FULL_SEQUENCE_ENDLESS, "type": "invalid_request_error", "param": None,
            "code": "realtime_unsupported"}}))
        return
    await ws.accept()
    worker = state.worker
    idle = float(_setting(ws, "realtime_idle_seconds", REALTIME_IDLE_SECONDS))
    loop = asyncio.get_running_loop()
    session: Optional[_RealtimeSession] = None
    pump: Optional[asyncio.Task] = None
    overflow: Optional[asyncio.Task] = None
    overflow_reason = None
    receive: Optional[asyncio.Task] = None

    async def pump_blocks(s: _RealtimeSession) -> str:
        while True:
            try:
                kind, payload = await s.buffer.get()
            except OverflowError:
                return "overflow"
            if kind == "end":
                if payload is not None:
                    await _send_error(ws, f"the session ended: {payload}", "session_failed", type="server_error")
                return "ended"
            await ws.send_text(json.dumps(kind))
            await ws.send_bytes(payload)

    gauge = _active_streams_gauge("realtime")
    gauge.inc()
    try:
        receive = asyncio.create_task(ws.receive())
        while True:
            waiting = {receive} | ({pump, overflow} if pump is not None else set())
            done, _ = await asyncio.wait(waiting, timeout=idle, return_when=asyncio.FIRST_COMPLETED)
            if not done:  # idle
                with contextlib.suppress(Exception):
                    await ws.send_text(json.dumps({"type": "session.stopped", "reason": "idle_timeout",
                                                   "message": f"no message from the client for {idle:g} s"}))
                await _close(ws, CLOSE_GOING_AWAY, f"idle for {idle:g} s")
                return
            if pump is not None and (pump in done or overflow in done):
                # overflow: the buffer filled while the pump was stuck sending to a slow client
                outcome = "overflow" if overflow in done else (pump.exception() or pump.result())
                if outcome == "overflow":
                    pump.cancel()
                    overflow_reason = f"client too slow: over {session.buffer._max_items} blocks unsent"
                    await _close(ws, CLOSE_TOO_SLOW, overflow_reason)
                    return
                if isinstance(outcome, Exception):
                    return  # the socket failed while sending
                with contextlib.suppress(Exception):
                    await ws.send_text(json.dumps({"type": "session.stopped", "reason": "ended"}))
                await _close(ws, CLOSE_NORMAL, "session ended")
                return
            if receive not in done:
                continue
            message = receive.result()
            if message["type"] == "websocket.disconnect":
                return
            receive = asyncio.create_task(ws.receive())
            text = message.get("text")
            if text is None:
                await _send_error(ws, "send JSON text messages, not binary", "invalid_message")
                continue
            if len(text) > REALTIME_MAX_MESSAGE_BYTES:
                await _send_error(ws, f"message is longer than {REALTIME_MAX_MESSAGE_BYTES} bytes", "message_too_large")
                continue
            try:
                msg = json.loads(text)
            except ValueError:
                await _send_error(ws, "message is not valid JSON", "invalid_json")
                continue
            if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
                await _send_error(ws, 'a message is a JSON object with a "type"', "invalid_message", "type")
                continue
            kind = msg["type"]
            if kind == "ping":
                await ws.send_text(json.dumps({"type": "pong"}))
            elif kind == "session.start":
                if session is not None:
                    await _send_error(ws, "a session is already running on this connection", "session_exists", "type")
                    continue
                try:
                    request = GenerationRequest(**_parse_start(msg))
                except _BadField as e:
                    await _send_error(ws, str(e), "invalid_value", e.param)
                    continue
                if not worker.ready.is_set():
                    await _send_error(ws, "the model is still loading; retry shortly", "model_not_ready",
                                      type="server_error")
                    continue
                e = worker.engine
                v = e.config.video
                frames_per_block = e.config.sampling.chunk_frames * e.temporal_compression
                candidate = _RealtimeSession(loop, v.width, v.height, v.fps, frames_per_block,
                                             int(_setting(ws, "realtime_buffer_blocks", REALTIME_BUFFER_BLOCKS)))
                try:
                    candidate.handle = worker.start_session(request, candidate.on_block, candidate.on_end)
                except Busy as err:
                    candidate.close()
                    await _send_error(ws, str(err), "too_many_sessions", type="rate_limit_error")
                    await _close(ws, CLOSE_TOO_SLOW, "too many realtime sessions; try again later")
                    return
                except ValueError as err:
                    candidate.close()
                    word = str(err).split(" ")[0].split("=")[0]
                    await _send_error(ws, str(err), "invalid_value",
                                      word if word in ("prompt", "seed", "num_inference_steps", "guidance_scale") else None)
                    continue
                session = candidate
                session.id = session.handle.id
                pump = asyncio.create_task(pump_blocks(session))
                overflow = asyncio.create_task(session.buffer.overflow_event.wait())
                await ws.send_text(json.dumps({"type": "session.started", "session_id": session.id,
                                               "seed": request.seed, "prompt": request.prompt, "width": v.width,
                                               "height": v.height, "fps": v.fps,
                                               "frames_per_block": frames_per_block}))
                log.info("realtime session started", extra={"job_id": session.id})
            elif kind == "prompt.update":
                prompt = msg.get("prompt")
                if session is None:
                    await _send_error(ws, "no session is running; send session.start first", "no_session", "type")
                elif not isinstance(prompt, str) or not prompt.strip():
                    await _send_error(ws, "prompt must be a non-empty string", "invalid_value", "prompt")
                else:
                    try:
                        session.handle.update_prompt(prompt, msg.get("negative_prompt") or "")
                    except ValueError as err:
                        await _send_error(ws, str(err), "invalid_value", "prompt")
                        continue
                    await ws.send_text(json.dumps({"type": "prompt.updated", "prompt": prompt}))
            elif kind == "session.stop":
                if session is not None:
                    session.handle.stop()
                    await asyncio.to_thread(session.handle.ended.wait, 30)
                with contextlib.suppress(Exception):
                    await ws.send_text(json.dumps({"type": "session.stopped", "reason": "stopped"}))
                await _close(ws, CLOSE_NORMAL, "session stopped")
                return
            else:
                await _send_error(ws, f"unknown message type {kind[:40]!r}; expected session.start, prompt.update, "
                                      f"session.stop or ping", "unknown_type", "type")
    except WebSocketDisconnect:
        pass
    finally:
        gauge.dec()
        for task in (receive, pump, overflow):
            if task is not None:
                task.cancel()
        if session is not None:
            session.handle.stop()  # frees the worker's slot at the next step
            await asyncio.to_thread(session.handle.ended.wait, 30)
            session.close()
            log.info("realtime session closed%s", f" ({overflow_reason})" if overflow_reason else "",
                     extra={"job_id": session.id})


# -- the playground page ---------------------------------------------------------------------
@router.get("/", include_in_schema=False)
async def playground() -> Response:
    return FileResponse(STATIC_DIR / "index.html", media_type=_STATIC_TYPES[".html"],
                        headers={"Cache-Control": "no-cache"})


@router.get("/static/{name}", include_in_schema=False)
async def static_file(name: str) -> Response:
    """The page's own files only: one flat directory, names checked, no path traversal."""
    path = STATIC_DIR / name
    if "/" in name or "\\" in name or name.startswith(".") or path.suffix not in _STATIC_TYPES or not path.is_file():
        return Response(json.dumps({"error": {"message": f"no static file {name[:60]!r}", "type": "invalid_request_error",
                                              "param": None, "code": "not_found"}}),
                        status_code=404, media_type="application/json")
    return FileResponse(path, media_type=_STATIC_TYPES[path.suffix], headers={"Cache-Control": "no-cache"})
