"""The OpenAI Videos API: create, list, retrieve, delete, cancel, download."""
from __future__ import annotations

import asyncio
import json
import logging
import math
from typing import Literal, Optional

from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse, Response
from pydantic import ValidationError

from sana_serve.server import metrics
from sana_serve.server.deps import Files, Model, Records, Settings, TheRunner, job_or_404, not_found
from sana_serve.server.errors import BodyTooLarge, validation_error
from sana_serve.server.interfaces import Runner
from sana_serve.server.jobs import ACTIVE, Job, QueueFull, new_job_id
from sana_serve.server.schemas import (VIDEO_ID, APIError, CreateVideoRequest, ErrorResponse, Video, VideoDeleted,
                                       VideoError, VideoList, format_seconds)
from sana_serve.server.validation import video_request

log = logging.getLogger("sana_serve.server")

DEFAULT_SECONDS = 4.0  # what OpenAI's API assumes when `seconds` is omitted
ERRORS = {code: {"model": ErrorResponse} for code in (400, 401, 404, 405, 409, 413, 415, 429, 503)}

router = APIRouter(prefix="/v1", tags=["videos"], responses=ERRORS)


def to_video(job: Job, runner: Runner) -> Video:
    error = VideoError(code=job.error_code or "error", message=job.error_message or "") if job.error_code else None
    progress = job.progress
    if job.status == "in_progress":  # per denoising step while it runs
        progress = max(progress, runner.live_progress(job.id) or 0)
    return Video(id=job.id, model=job.model, status=job.status, progress=progress,
                 created_at=int(job.created_at), completed_at=None if job.completed_at is None else int(job.completed_at),
                 expires_at=None if job.expires_at is None else math.ceil(job.expires_at), prompt=job.prompt,
                 size=job.size, seconds=format_seconds(job.seconds), error=error, seed=job.seed,
                 priority=job.priority, num_blocks=job.num_blocks, blocks_completed=job.blocks_completed)


async def _wait_released(released) -> None:
    """Wait (off the event loop) until the worker has dropped a cancelled rollout."""
    if released is not None:
        await asyncio.get_running_loop().run_in_executor(None, released.wait, 60.0)


async def _read_create_body(request: Request) -> tuple[dict, bool]:
    """The body's fields, and whether it was JSON."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype in ("", "application/json"):
        raw = await request.body()
        try:
            data = json.loads(raw) if raw.strip() else None
        except (ValueError, UnicodeDecodeError) as e:
            raise APIError(400, f"request body is not valid JSON: {e}", None, "invalid_json") from None
    elif ctype in ("multipart/form-data", "application/x-www-form-urlencoded"):
        try:
            form = await request.form(max_files=1, max_fields=32)
        except BodyTooLarge:
            raise
        except Exception as e:  # noqa: BLE001 - malformed multipart
            raise APIError(400, f"could not parse the form body: {e}", None, "invalid_form") from None
        data = {}
        for key, value in form.multi_items():
            if not isinstance(value, str):
                raise APIError(400, f"{key}: file uploads are not supported by this server", key, "unsupported")
            data[key] = value
    else:
        raise APIError(415, f"unsupported content type {ctype[:80]!r}; send application/json or multipart/form-data",
                       None, "unsupported_media_type")
    if not isinstance(data, dict):
        raise APIError(400, "request body must be a JSON object with at least a `prompt`", None, "invalid_body")
    return data, ctype in ("", "application/json")


def _create_request_body() -> dict:
    schema = CreateVideoRequest.model_json_schema()
    schema.pop("title", None)
    return {"required": True, "content": {"application/json": {"schema": schema},
                                          "multipart/form-data": {"schema": schema}}}


def model_not_ready(runner: Runner) -> APIError:
    return APIError(503, "the model is still loading; retry shortly" if runner.load_error is None
                    else f"the model failed to load: {runner.load_error}", None, "model_not_ready",
                    "server_error", {"Retry-After": "5"})


@router.post("/videos", response_model=Video, summary="Create a video job",
             openapi_extra={"requestBody": _create_request_body()})
async def create_video(request: Request, records: Records, runner: TheRunner, cfg: Model,
                       settings: Settings) -> Video:
    """Queue a text-to-video job. Accepts JSON or multipart/form-data (what the openai SDK sends)."""
    data, is_json = await _read_create_body(request)
    try:  # JSON values have types; in a form every value is a string the model converts
        body = CreateVideoRequest.model_validate(data, strict=is_json)
    except ValidationError as e:
        raise validation_error(e.errors()) from None
    rules = runner.rules
    if not runner.ready.is_set() or rules is None:
        raise model_not_ready(runner)
    gen = video_request(body, cfg, rules, min(DEFAULT_SECONDS, cfg.limits.max_seconds))
    job = Job(id=new_job_id(), model=cfg.name, prompt=gen.prompt, seconds=gen.seconds,
              size=f"{gen.width}x{gen.height}", seed=gen.seed, num_blocks=len(rules.plan_blocks(gen)),
              negative_prompt=gen.negative_prompt, num_inference_steps=gen.num_inference_steps,
              guidance_scale=gen.guidance_scale, priority=body.priority, frames=gen.frames)
    try:
        records.create(job, settings.max_queued)
    except QueueFull as e:
        metrics.JOBS_REJECTED.inc()
        raise APIError(429, f"the queue is full ({e.queued} jobs waiting); retry later", None, "queue_full",
                       "rate_limit_error", {"Retry-After": str(runner.retry_after())}) from None
    runner.notify()
    log.info("job queued: %d blocks, %d frames, seed %d", job.num_blocks, job.frames, job.seed,
             extra={"job_id": job.id})
    return to_video(job, runner)


@router.get("/videos", response_model=VideoList, summary="List video jobs")
async def list_videos(records: Records, runner: TheRunner,
                      after: Optional[str] = Query(None, pattern=VIDEO_ID.pattern,
                                                   description="id of the last video of the previous page"),
                      limit: int = Query(20, ge=1, le=100), order: Literal["asc", "desc"] = "desc") -> VideoList:
    jobs, has_more = records.list(after, limit, order)
    if after is not None and not jobs and records.get(after) is None:
        raise APIError(404, f"after: no video with id {after!r}", "after", "not_found")
    data = [to_video(j, runner) for j in jobs]
    return VideoList(data=data, first_id=data[0].id if data else None, last_id=data[-1].id if data else None,
                     has_more=has_more)


@router.get("/videos/{video_id}", response_model=Video, summary="Retrieve a video job")
async def retrieve_video(video_id: str, response: Response, records: Records, runner: TheRunner) -> Video:
    job = job_or_404(records, video_id)
    if job.status in ACTIVE:
        response.headers["openai-poll-after-ms"] = "500"  # the openai SDK's poll() honours this
    return to_video(job, runner)


@router.delete("/videos/{video_id}", response_model=VideoDeleted,
               summary="Delete a video job (cancels it if running)")
async def delete_video(video_id: str, records: Records, runner: TheRunner) -> VideoDeleted:
    if not VIDEO_ID.fullmatch(video_id):
        raise not_found(video_id)
    job = records.delete(video_id)
    if job is None:
        raise not_found(video_id)
    await _wait_released(await asyncio.to_thread(runner.cancel, job, True))
    log.info("job deleted (was %s)", job.status, extra={"job_id": video_id})
    return VideoDeleted(id=video_id)


@router.post("/videos/{video_id}/cancel", response_model=Video, summary="Cancel a job, keeping its record")
async def cancel_video(video_id: str, records: Records, runner: TheRunner, settings: Settings) -> Video:
    """Extension: stop a queued or running job within one denoising step; status becomes `cancelled`."""
    job = job_or_404(records, video_id)
    if not records.finish(video_id, "cancelled", settings.job_ttl_seconds, "cancelled", "cancelled by the client"):
        now = records.get(video_id)
        raise APIError(409, f"video {video_id} is already {now.status if now else 'deleted'}", "video_id",
                       "not_cancellable")
    await _wait_released(await asyncio.to_thread(runner.cancel, job, False))
    log.info("job cancelled", extra={"job_id": video_id})
    return to_video(records.get(video_id) or job, runner)


@router.get("/videos/{video_id}/content", summary="Download the MP4 (or its thumbnail)",
            response_class=Response,
            responses={200: {"content": {"video/mp4": {}, "image/png": {}}}, 206: {"description": "Partial content"},
                       416: {"model": ErrorResponse}})
async def download_content(video_id: str, records: Records, files: Files,
                           variant: Literal["video", "thumbnail"] = "video"):
    """Supports HTTP Range requests (206 Partial Content) for seeking video players."""
    job = job_or_404(records, video_id)
    if job.status != "completed":
        raise APIError(404, f"video {video_id} is not ready: status {job.status}, {job.progress}% done"
                       + (" (stream it live over WS /v1/videos/{id}/stream)" if job.status in ACTIVE else ""),
                       "video_id", "video_not_ready")
    name, media = ("video.mp4", "video/mp4") if variant == "video" else ("thumbnail.png", "image/png")
    path = await asyncio.to_thread(files.local_file, video_id, name)
    if path is None:
        raise APIError(404, f"the {variant} of video {video_id} is missing on disk", "variant", "not_found")
    return FileResponse(path, media_type=media, filename=f"{video_id}.{path.suffix.lstrip('.')}",
                        content_disposition_type="inline")
