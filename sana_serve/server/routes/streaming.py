"""WS /v1/videos/{id}/stream[?from_block=k]: a job's blocks as they are made.

Per block a JSON text event `{"type":"video.block","id","index","frame_start","frame_count",
"num_blocks","progress"}` and then one binary message, the block's fragmented-MP4 media
segment; the first binary message of a connection carries the init segment in front. Then
`{"type":"video.completed"}` or `{"type":"video.failed","error":{code,message}}` and a normal
close. Blocks come from storage (finished jobs, or the part of a running job before the
viewer joined) and then live from the BlockHub, so `from_block` resumes without gaps. A viewer
that falls too far behind is closed with code 1013 and a reason naming the block to resume
from; the job goes on. API keys are checked for every websocket by server.app's Guard.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging

from fastapi import APIRouter, WebSocket
from starlette.websockets import WebSocketDisconnect, WebSocketState

from sana_serve.server.deps import Files, Hub, Records
from sana_serve.server.hub import Replay, StreamClosed
from sana_serve.server.jobs import ACTIVE
from sana_serve.server.metrics import ACTIVE_STREAMS
from sana_serve.server.schemas import VIDEO_ID

log = logging.getLogger("sana_serve.ws")

router = APIRouter()

CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001  # idle timeout, server shutting down
CLOSE_POLICY = 1008  # bad request: unknown id, bad parameter
JOB_POLL_SECONDS = 2.0  # how often a stream re-checks that its job still exists


async def close(ws: WebSocket, code: int, reason: str) -> None:
    """Close with a reason (websocket reasons are limited to 123 bytes), never hanging."""
    reason = reason.encode()[:123].decode("utf-8", "ignore")
    if ws.application_state == WebSocketState.DISCONNECTED or ws.client_state == WebSocketState.DISCONNECTED:
        return
    with contextlib.suppress(Exception):
        await asyncio.wait_for(ws.close(code=code, reason=reason), timeout=10)


async def _drain_client(ws: WebSocket) -> None:
    """Read (and ignore) what a viewer sends until it disconnects: how a disconnect is noticed."""
    with contextlib.suppress(WebSocketDisconnect, RuntimeError):
        while True:
            message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                return


@router.websocket("/v1/videos/{video_id}/stream")
async def stream_video(ws: WebSocket, video_id: str, records: Records, files: Files, hub: Hub):
    await ws.accept()
    raw_from = ws.query_params.get("from_block", "0")
    try:
        from_block = int(raw_from)
    except ValueError:
        from_block = -1
    job = await asyncio.to_thread(records.get, video_id) if VIDEO_ID.fullmatch(video_id) else None
    if job is None:
        return await close(ws, CLOSE_POLICY, f"no video with id {video_id[:60]!r}")
    if not 0 <= from_block <= job.num_blocks:
        return await close(ws, CLOSE_POLICY, f"from_block must be an integer between 0 and {job.num_blocks}, "
                                             f"got {raw_from[:20]!r}")
    if job.status in ACTIVE:
        source = hub.subscribe(job.id, from_block)
    else:  # finished: replay whatever is stored, then how it ended
        if job.status == "completed":
            end = {"type": "video.completed", "id": job.id}
        else:
            end = {"type": "video.failed", "id": job.id, "error": {
                "code": job.error_code or job.status, "message": job.error_message or f"the job was {job.status}"}}
        source = _replay_finished(Replay(lambda: files.replay_reader(job.id), job.id, from_block), end)

    gauge = ACTIVE_STREAMS.labels("job")
    gauge.inc()
    reader = asyncio.create_task(_drain_client(ws))
    watch = asyncio.create_task(_watch_job(records, job.id))
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
            await close(ws, closed.code, closed.reason)
        elif pump in done:
            error = pump.exception()
            if isinstance(error, StreamClosed):
                log.info("stream viewer cut off: %s", error.reason, extra={"job_id": job.id})
                await close(ws, error.code, error.reason)
            elif error is not None and not isinstance(error, (WebSocketDisconnect, OSError, RuntimeError)):
                log.error("stream failed", exc_info=error, extra={"job_id": job.id})
                await close(ws, 1011, "internal error while streaming")
            else:
                await close(ws, CLOSE_NORMAL, "")
        elif watch in done:  # the job vanished (deleted, expired) without an end event
            with contextlib.suppress(Exception):
                await ws.send_text(json.dumps({"type": "video.failed", "id": job.id, "error": {
                    "code": "deleted", "message": "the video was deleted"}}))
            await close(ws, CLOSE_NORMAL, "the video was deleted")
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        with contextlib.suppress(Exception):
            await source.aclose()
        gauge.dec()


async def _replay_finished(replay: Replay, end: dict):
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


async def _watch_job(records, job_id: str) -> None:
    """Return when the job's record is gone (deleted without the hub hearing of it)."""
    while True:
        await asyncio.sleep(JOB_POLL_SECONDS)
        if await asyncio.to_thread(records.get, job_id) is None:
            return
