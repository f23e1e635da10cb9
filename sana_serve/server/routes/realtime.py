"""WS /v1/realtime: an endless, steerable video stream.

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
Limits: `max_sessions` concurrent sessions (then an error and close 1013); a session with no
client message for `realtime_idle_seconds` is stopped; messages above 16 KiB are refused.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
from typing import Optional

import numpy as np
from fastapi import APIRouter, WebSocket
from fastapi.responses import JSONResponse
from starlette.websockets import WebSocketDisconnect

from sana_serve.engine.rollout import FULL_SEQUENCE_ENDLESS
from sana_serve.engine.video import FragmentedMp4Encoder
from sana_serve.server.config import ServerSettings
from sana_serve.server.deps import Model, Settings, TheRunner
from sana_serve.server.hub import CLOSE_TOO_SLOW, ViewerBuffer
from sana_serve.server.interfaces import Runner
from sana_serve.server.metrics import ACTIVE_STREAMS
from sana_serve.server.outputs import block_event
from sana_serve.server.routes.streaming import CLOSE_GOING_AWAY, CLOSE_NORMAL, close
from sana_serve.server.schemas import APIError
from sana_serve.server.validation import check_prompt, session_request
from sana_serve.server.worker import Busy

log = logging.getLogger("sana_serve.ws")

router = APIRouter()

MAX_MESSAGE_BYTES = 16 * 1024


class _Stop(Exception):
    """End the connection (after the close was sent)."""


class _Blocks:
    """Glue between a running session (blocks arrive on a worker or relay thread) and one socket.

    Each block is encoded to an fMP4 segment right on that thread (milliseconds for the
    built-in model) and queued in a bounded buffer for the socket; a client that cannot keep
    up is cut off instead of holding frames in memory.
    """

    def __init__(self, loop, width: int, height: int, fps: float, frames_per_block: int, buffer_blocks: int):
        self.buffer = ViewerBuffer(loop, buffer_blocks, 64 << 20)
        self.encoder = FragmentedMp4Encoder(width, height, fps, frames_per_block)
        self.session_id: Optional[str] = None
        self._init_sent = False
        self._lock = threading.Lock()

    def on_block(self, block) -> None:
        with self._lock:
            if self.encoder is None:
                return
            segment = self.encoder.encode_block(np.ascontiguousarray(block.frames))
            if not self._init_sent:
                segment = self.encoder.init_segment + segment
                self._init_sent = True
        event = dict(block_event(block.index, block.frame_start, block.frame_count, None), id=self.session_id)
        self.buffer.offer((event, segment), size=len(segment))

    def on_end(self, error: Optional[str]) -> None:
        self.buffer.offer(("end", error), always=True)

    def close(self) -> None:
        with self._lock:
            if self.encoder is not None:
                self.encoder.close()
                self.encoder = None


class RealtimeConnection:
    """The protocol of one /v1/realtime socket: messages in, blocks out, at most one session."""

    def __init__(self, ws: WebSocket, runner: Runner, cfg, settings: ServerSettings):
        self.ws, self.runner, self.cfg, self.settings = ws, runner, cfg, settings
        self.blocks: Optional[_Blocks] = None
        self.session = None  # interfaces.Session, once started
        self.pump: Optional[asyncio.Task] = None
        self.overflow: Optional[asyncio.Task] = None
        self.closed_reason: Optional[str] = None

    async def send(self, message: dict) -> None:
        await self.ws.send_text(json.dumps(message))

    async def error(self, message: str, code: str, param: Optional[str] = None,
                    type: str = "invalid_request_error") -> None:
        await self.send({"type": "error", "error": {"message": message, "type": type, "param": param, "code": code}})

    async def stop_with(self, code: int, reason: str, event: Optional[dict] = None):
        if event is not None:
            with contextlib.suppress(Exception):
                await self.send(event)
        await close(self.ws, code, reason)
        raise _Stop

    # -- the loop ------------------------------------------------------------------------------
    async def run(self) -> None:
        idle = self.settings.realtime_idle_seconds
        receive = asyncio.create_task(self.ws.receive())
        try:
            while True:
                waiting = {receive} | ({self.pump, self.overflow} if self.pump is not None else set())
                done, _ = await asyncio.wait(waiting, timeout=idle, return_when=asyncio.FIRST_COMPLETED)
                if not done:
                    await self.stop_with(CLOSE_GOING_AWAY, f"idle for {idle:g} s", {
                        "type": "session.stopped", "reason": "idle_timeout",
                        "message": f"no message from the client for {idle:g} s"})
                if self.pump is not None and (self.pump in done or self.overflow in done):
                    await self._session_over(done)
                if receive in done:
                    message = receive.result()
                    if message["type"] == "websocket.disconnect":
                        return
                    receive = asyncio.create_task(self.ws.receive())
                    await self.on_message(message.get("text"))
        except (_Stop, WebSocketDisconnect):
            pass
        finally:
            for task in (receive, self.pump, self.overflow):
                if task is not None:
                    task.cancel()
            await self._end_session()

    async def _session_over(self, done) -> None:
        # overflow: the buffer filled while the pump was stuck sending to a slow client
        outcome = "overflow" if self.overflow in done else (self.pump.exception() or self.pump.result())
        if outcome == "overflow":
            self.pump.cancel()
            self.closed_reason = f"client too slow: over {self.settings.realtime_buffer_blocks} blocks unsent"
            await self.stop_with(CLOSE_TOO_SLOW, self.closed_reason)
        if isinstance(outcome, Exception):
            raise _Stop  # the socket failed while sending
        await self.stop_with(CLOSE_NORMAL, "session ended", {"type": "session.stopped", "reason": "ended"})

    async def _pump_blocks(self) -> str:
        while True:
            try:
                kind, payload = await self.blocks.buffer.get()
            except OverflowError:
                return "overflow"
            if kind == "end":
                if payload is not None:
                    await self.error(f"the session ended: {payload}", "session_failed", type="server_error")
                return "ended"
            await self.send(kind)
            await self.ws.send_bytes(payload)

    async def _end_session(self) -> None:
        if self.session is None:
            return
        self.session.stop()  # frees the worker's slot at the next step
        await asyncio.to_thread(self.session.ended.wait, 30)
        self.blocks.close()
        log.info("realtime session closed%s", f" ({self.closed_reason})" if self.closed_reason else "",
                 extra={"job_id": self.session.id})

    # -- messages ------------------------------------------------------------------------------
    async def on_message(self, text: Optional[str]) -> None:
        if text is None:
            return await self.error("send JSON text messages, not binary", "invalid_message")
        if len(text) > MAX_MESSAGE_BYTES:
            return await self.error(f"message is longer than {MAX_MESSAGE_BYTES} bytes", "message_too_large")
        try:
            msg = json.loads(text)
        except ValueError:
            return await self.error("message is not valid JSON", "invalid_json")
        if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
            return await self.error('a message is a JSON object with a "type"', "invalid_message", "type")
        handler = {"ping": self.on_ping, "session.start": self.on_start, "prompt.update": self.on_prompt_update,
                   "session.stop": self.on_stop}.get(msg["type"])
        if handler is None:
            return await self.error(f"unknown message type {msg['type'][:40]!r}; expected session.start, "
                                    f"prompt.update, session.stop or ping", "unknown_type", "type")
        try:
            await handler(msg)
        except APIError as e:  # a bad field: the connection (and any session) goes on
            await self.error(e.message, e.code or "invalid_value", e.param)

    async def on_ping(self, msg: dict) -> None:
        await self.send({"type": "pong"})

    async def on_start(self, msg: dict) -> None:
        if self.session is not None:
            return await self.error("a session is already running on this connection", "session_exists", "type")
        check_prompt(msg.get("prompt"), self.cfg)  # before readiness: a bad message is the client's to fix
        rules = self.runner.rules
        if not self.runner.ready.is_set() or rules is None:
            return await self.error("the model is still loading; retry shortly", "model_not_ready",
                                    type="server_error")
        request = session_request(msg, self.cfg, rules)
        v = rules.config.video
        frames_per_block = rules.config.sampling.chunk_frames * rules.temporal_compression
        blocks = _Blocks(asyncio.get_running_loop(), v.width, v.height, v.fps, frames_per_block,
                         self.settings.realtime_buffer_blocks)
        try:
            session = self.runner.start_session(request, blocks.on_block, blocks.on_end)
        except Busy as e:
            blocks.close()
            await self.error(str(e), "too_many_sessions", type="rate_limit_error")
            await self.stop_with(CLOSE_TOO_SLOW, "too many realtime sessions; try again later")
        except ValueError as e:  # the engine's guard (validated above)
            blocks.close()
            return await self.error(str(e), "invalid_value")
        blocks.session_id = session.id
        self.session, self.blocks = session, blocks
        self.pump = asyncio.create_task(self._pump_blocks())
        self.overflow = asyncio.create_task(blocks.buffer.overflow_event.wait())
        await self.send({"type": "session.started", "session_id": session.id, "seed": request.seed,
                         "prompt": request.prompt, "width": v.width, "height": v.height, "fps": v.fps,
                         "frames_per_block": frames_per_block})
        log.info("realtime session started", extra={"job_id": session.id})

    async def on_prompt_update(self, msg: dict) -> None:
        if self.session is None:
            return await self.error("no session is running; send session.start first", "no_session", "type")
        prompt = check_prompt(msg.get("prompt"), self.cfg)
        negative = check_prompt(msg.get("negative_prompt") or "", self.cfg, "negative_prompt", required=False)
        try:
            self.session.update_prompt(prompt, negative)
        except ValueError as e:
            return await self.error(str(e), "invalid_value", "prompt")
        await self.send({"type": "prompt.updated", "prompt": prompt})

    async def on_stop(self, msg: dict) -> None:
        if self.session is not None:
            self.session.stop()
            await asyncio.to_thread(self.session.ended.wait, 30)
        await self.stop_with(CLOSE_NORMAL, "session stopped", {"type": "session.stopped", "reason": "stopped"})


@router.websocket("/v1/realtime")
async def realtime(ws: WebSocket, runner: TheRunner, cfg: Model, settings: Settings):
    if cfg.sampling.mode == "full_sequence":  # refused before the handshake, as plain HTTP
        await ws.send_denial_response(JSONResponse(status_code=409, content={"error": {
            "message": FULL_SEQUENCE_ENDLESS, "type": "invalid_request_error", "param": None,
            "code": "realtime_unsupported"}}))
        return
    await ws.accept()
    gauge = ACTIVE_STREAMS.labels("realtime")
    gauge.inc()
    try:
        await RealtimeConnection(ws, runner, cfg, settings).run()
    finally:
        gauge.dec()
