"""The FastAPI application: OpenAI-compatible Videos API, health, metrics; `serve` runs it.

`create_app(settings)` wires the parts and puts them on `app.state` for every router:
    settings (ServerSettings), model_config (engine ModelConfig), store (JobStore),
    files (JobFiles), hub (server.hub.BlockHub or None), worker (server.worker.Worker).
The model loads on the worker thread after startup: /readyz answers 503 until it is in.

Every error is OpenAI's envelope {"error": {"message", "type", "param", "code"}}: request
validation failures are 400s whose `param` names the field, unknown ids 404, a full queue
429 with Retry-After, a missing or wrong API key 401, an oversized body 413.
"""
from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import math
import secrets
import sys
import time
from typing import Literal, Optional

from fastapi import APIRouter, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, JSONResponse, Response
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from sana_serve.engine.config import load_config
from sana_serve.engine.rollout import GenerationRequest
from sana_serve.server import metrics
from sana_serve.server.config import ServerSettings, bearer_token
from sana_serve.server.schemas import (VIDEO_ID, APIError, CreateVideoRequest, ErrorResponse, Health, Video, VideoDeleted,
                            VideoError, VideoList, format_seconds, validate_create)
from sana_serve.server.store import Job, JobFiles, QueueFull, SqliteJobStore, new_job_id
from sana_serve.server.worker import Worker

log = logging.getLogger("sana_serve.server")

DEFAULT_SECONDS = 4.0  # what OpenAI's API assumes when `seconds` is omitted
ERRORS = {code: {"model": ErrorResponse} for code in (400, 401, 404, 409, 413, 415, 429, 503)}


# -- errors ----------------------------------------------------------------------------------
def error_response(status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                   code: str | None = None, headers: dict | None = None) -> JSONResponse:
    body = {"error": {"message": message, "type": type, "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


def _field(loc) -> str | None:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header", "form")]
    return ".".join(parts) or None


def _validation_error(errors: list[dict]) -> APIError:
    first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
    param = _field(first.get("loc", ()))
    message = first.get("msg", "invalid value")
    return APIError(400, f"{param}: {message}" if param else message, param, "invalid_value")


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(_, exc: APIError):
        return error_response(exc.status, exc.message, exc.type, exc.param, exc.code, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _request_validation(_, exc: RequestValidationError):
        e = _validation_error(list(exc.errors()))
        return error_response(e.status, e.message, e.type, e.param, e.code)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_, exc: StarletteHTTPException):
        kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        return error_response(exc.status_code, str(exc.detail), kind, None, code, getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, "internal server error", "server_error", None, "internal_error")


# -- auth and body size (pure ASGI, so they cover every route, websockets included) ----------------
class BodyTooLarge(APIError):
    def __init__(self, limit: int):
        super().__init__(413, f"request body is larger than {limit} bytes", None, "body_too_large")


class Guard:
    """API keys on every non-public path (HTTP: Bearer header; websockets: header or ?api_key=),
    and a request body limit (declared Content-Length or counted while streaming)."""

    def __init__(self, app, settings: ServerSettings):
        self.app, self.settings = app, settings

    def _public(self, path: str) -> bool:
        for p in self.settings.public_paths:
            if path == p or (len(p) > 1 and p.endswith("/") and path.startswith(p)):
                return True
        return False

    def _token(self, scope) -> str | None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        token = bearer_token(headers.get("authorization"))
        if token is None and scope["type"] == "websocket":
            from urllib.parse import parse_qs

            token = (parse_qs(scope.get("query_string", b"").decode("latin-1")).get("api_key") or [None])[0]
        return token

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        s = self.settings
        if (s.auth_enabled and not self._public(scope["path"])
                and not (scope["type"] == "http" and scope["method"] == "OPTIONS")  # CORS preflight
                and not s.check_key(self._token(scope))):
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008, "reason": "missing or invalid API key"})
                return
            response = error_response(401, "missing or invalid API key (send Authorization: Bearer <key>)",
                                      "invalid_request_error", None, "invalid_api_key",
                                      {"WWW-Authenticate": "Bearer"})
            return await response(scope, receive, send)
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = s.max_body_bytes
        for k, v in scope.get("headers", []):
            if k.lower() == b"content-length":
                try:
                    declared = int(v)
                except ValueError:
                    declared = 0
                if declared > limit:
                    e = BodyTooLarge(limit)
                    return await error_response(413, e.message, e.type, None, e.code)(scope, receive, send)
        seen = 0

        async def counting_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge(limit)
            return message

        return await self.app(scope, counting_receive, send)


# -- helpers ---------------------------------------------------------------------------------
def to_video(job: Job, worker: Worker | None = None) -> Video:
    error = VideoError(code=job.error_code or "error", message=job.error_message or "") if job.error_code else None
    progress = job.progress
    if worker is not None and job.status == "in_progress":  # per denoising step while it runs here
        progress = max(progress, worker.live_progress(job.id) or 0)
    return Video(id=job.id, model=job.model, status=job.status, progress=progress,
                 created_at=int(job.created_at), completed_at=None if job.completed_at is None else int(job.completed_at),
                 expires_at=None if job.expires_at is None else math.ceil(job.expires_at), prompt=job.prompt,
                 size=job.size, seconds=format_seconds(job.seconds), error=error, seed=job.seed,
                 priority=job.priority, num_blocks=job.num_blocks, blocks_completed=job.blocks_completed)


def _not_found(video_id: str) -> APIError:
    return APIError(404, f"no video with id {video_id[:80]!r}", "video_id", "not_found")


def _job_or_404(request: Request, video_id: str) -> Job:
    if not VIDEO_ID.fullmatch(video_id):
        raise _not_found(video_id)
    job = request.app.state.store.get(video_id)
    if job is None:
        raise _not_found(video_id)
    return job


async def _wait_released(released) -> None:
    """Wait (off the event loop) until the worker has dropped a cancelled rollout."""
    if released is not None:
        await asyncio.get_running_loop().run_in_executor(None, released.wait, 60.0)


async def _read_create_body(request: Request) -> dict:
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
        data = {k: v for k, v in data.items() if not (v == "" and k != "prompt")}  # empty form field = unset
    else:
        raise APIError(415, f"unsupported content type {ctype[:80]!r}; send application/json or multipart/form-data",
                       None, "unsupported_media_type")
    if not isinstance(data, dict):
        raise APIError(400, "request body must be a JSON object with at least a `prompt`", None, "invalid_body")
    return data


_ENGINE_PARAMS = ("prompt", "negative_prompt", "seconds", "frames", "size", "num_inference_steps", "guidance_scale",
                  "seed")


def _create_request_body() -> dict:
    schema = CreateVideoRequest.model_json_schema()
    schema.pop("title", None)
    return {"required": True, "content": {"application/json": {"schema": schema},
                                          "multipart/form-data": {"schema": schema}}}


# -- routes ----------------------------------------------------------------------------------
videos = APIRouter(prefix="/v1", tags=["videos"], responses=ERRORS)


@videos.post("/videos", response_model=Video, summary="Create a video job",
             openapi_extra={"requestBody": _create_request_body()})
async def create_video(request: Request) -> Video:
    """Queue a text-to-video job. Accepts JSON or multipart/form-data (what the openai SDK sends)."""
    state = request.app.state
    data = await _read_create_body(request)
    try:
        body = CreateVideoRequest.model_validate(data)
    except ValidationError as e:
        raise _validation_error(e.errors()) from None
    params = validate_create(body, state.model_config, min(DEFAULT_SECONDS, state.model_config.limits.max_seconds))
    worker: Worker = state.worker
    if not worker.ready.is_set():
        raise APIError(503, "the model is still loading; retry shortly" if worker.load_error is None
                       else f"the model failed to load: {worker.load_error}", None, "model_not_ready",
                       "server_error", {"Retry-After": "5"})
    seed = params["seed"] if params["seed"] is not None else secrets.randbelow(2**31)
    width, height = (int(v) for v in params["size"].split("x"))
    gen = GenerationRequest(params["prompt"], params["seconds"], seed, params["negative_prompt"],
                                 params["num_inference_steps"], params["guidance_scale"], frames=params["frames"],
                                 width=width, height=height)
    try:
        worker.validate(gen)
    except ValueError as e:  # the engine's checks (frame rule, sizes): name the field it complains about
        word = str(e).split(" ")[0].split("=")[0]
        raise APIError(400, str(e), word if word in _ENGINE_PARAMS else None, "invalid_value") from None
    job = Job(id=new_job_id(), model=state.model_config.name, prompt=params["prompt"], seconds=params["seconds"],
              size=params["size"], seed=seed, num_blocks=len(worker.engine.plan_blocks(gen)),
              negative_prompt=params["negative_prompt"], num_inference_steps=params["num_inference_steps"],
              guidance_scale=params["guidance_scale"], priority=params["priority"])
    try:
        state.store.create(job, state.settings.max_queued)
    except QueueFull as e:
        metrics.JOBS_REJECTED.inc()
        raise APIError(429, f"the queue is full ({e.queued} jobs waiting); retry later", None, "queue_full",
                       "rate_limit_error", {"Retry-After": str(worker.retry_after())}) from None
    worker.notify()
    log.info("job queued: %d blocks, %gs, seed %d", job.num_blocks, job.seconds, seed, extra={"job_id": job.id})
    return to_video(job, request.app.state.worker)


@videos.get("/videos", response_model=VideoList, summary="List video jobs")
async def list_videos(request: Request,
                      after: Optional[str] = Query(None, description="id of the last video of the previous page"),
                      limit: int = Query(20, ge=1, le=100), order: Literal["asc", "desc"] = "desc") -> VideoList:
    if after is not None and not VIDEO_ID.fullmatch(after):
        raise APIError(400, f"after must be a video id, got {after[:80]!r}", "after", "invalid_value")
    jobs, has_more = request.app.state.store.list(after, limit, order)
    if after is not None and not jobs and request.app.state.store.get(after) is None:
        raise APIError(400, f"after: no video with id {after!r}", "after", "not_found")
    data = [to_video(j, request.app.state.worker) for j in jobs]
    return VideoList(data=data, first_id=data[0].id if data else None, last_id=data[-1].id if data else None,
                     has_more=has_more)


@videos.get("/videos/{video_id}", response_model=Video, summary="Retrieve a video job")
async def retrieve_video(request: Request, video_id: str, response: Response) -> Video:
    job = _job_or_404(request, video_id)
    if job.status in ("queued", "in_progress"):
        response.headers["openai-poll-after-ms"] = "500"  # the openai SDK's poll() honours this
    return to_video(job, request.app.state.worker)


@videos.delete("/videos/{video_id}", response_model=VideoDeleted, summary="Delete a video job (cancels it if running)")
async def delete_video(request: Request, video_id: str) -> VideoDeleted:
    state = request.app.state
    if not VIDEO_ID.fullmatch(video_id):
        raise _not_found(video_id)
    job = state.store.delete(video_id)
    if job is None:
        raise _not_found(video_id)
    released = state.worker.cancel(video_id, delete_files=True)
    if released is None:  # not running: nothing in memory, remove what is on disk
        await asyncio.get_running_loop().run_in_executor(None, state.files.remove, video_id)
        if state.hub is not None and job.status in ("queued", "in_progress"):
            with contextlib.suppress(Exception):
                state.hub.finish(video_id, {"type": "video.failed", "id": video_id,
                                            "error": {"code": "deleted", "message": "the video was deleted"}})
    else:
        await _wait_released(released)
    log.info("job deleted (was %s)", job.status, extra={"job_id": video_id})
    return VideoDeleted(id=video_id)


@videos.post("/videos/{video_id}/cancel", response_model=Video, summary="Cancel a job, keeping its record")
async def cancel_video(request: Request, video_id: str) -> Video:
    """Extension: stop a queued or running job within one denoising step; status becomes `cancelled`."""
    state = request.app.state
    job = _job_or_404(request, video_id)
    if not state.store.finish(video_id, "cancelled", state.settings.job_ttl_seconds, "cancelled",
                              "cancelled by the client"):
        raise APIError(409, f"video {video_id} is already {state.store.get(video_id).status if state.store.get(video_id) else 'deleted'}",
                       "video_id", "not_cancellable")
    released = state.worker.cancel(video_id, delete_files=False)
    if released is None:
        metrics.JOBS_FINISHED.labels("cancelled").inc()
        if state.hub is not None and job.status in ("queued", "in_progress"):
            with contextlib.suppress(Exception):
                state.hub.finish(video_id, {"type": "video.failed", "id": video_id,
                                            "error": {"code": "cancelled", "message": "the job was cancelled"}})
    else:
        await _wait_released(released)
    log.info("job cancelled", extra={"job_id": video_id})
    return to_video(state.store.get(video_id) or job, request.app.state.worker)


@videos.get("/videos/{video_id}/content", summary="Download the MP4 (or its thumbnail)",
            response_class=Response,
            responses={200: {"content": {"video/mp4": {}, "image/png": {}}}, 206: {"description": "Partial content"},
                       416: {"model": ErrorResponse}})
async def download_content(request: Request, video_id: str,
                           variant: Literal["video", "thumbnail", "spritesheet"] = "video"):
    """Supports HTTP Range requests (206 Partial Content) for seeking video players."""
    job = _job_or_404(request, video_id)
    if variant == "spritesheet":
        raise APIError(400, "variant 'spritesheet' is not available on this server; use video or thumbnail",
                       "variant", "unsupported")
    if job.status != "completed":
        raise APIError(404, f"video {video_id} is not ready: status {job.status}, {job.progress}% done"
                       + (" (stream it live over WS /v1/videos/{id}/stream)" if job.status in ("queued", "in_progress")
                          else ""), "video_id", "video_not_ready")
    name, media = ("video.mp4", "video/mp4") if variant == "video" else ("thumbnail.png", "image/png")
    path = await asyncio.to_thread(request.app.state.files.local_file, video_id, name)
    if path is None:
        raise APIError(404, f"the {variant} of video {video_id} is missing on disk", "variant", "not_found")
    return FileResponse(path, media_type=media, filename=f"{video_id}.{path.suffix.lstrip('.')}",
                        content_disposition_type="inline")


ops = APIRouter(tags=["operations"])


@ops.get("/healthz", response_model=Health, summary="Liveness: the process answers")
async def healthz() -> Health:
    return Health(status="ok")


@ops.get("/readyz", response_model=Health, summary="Readiness: the model is loaded",
         responses={503: {"model": Health}})
async def readyz(request: Request):
    worker: Worker = request.app.state.worker
    if worker.ready.is_set():
        return Health(status="ready")
    detail = "loading the model" if worker.load_error is None else f"model failed to load: {worker.load_error}"
    return JSONResponse(Health(status="not_ready", detail=detail).model_dump(), status_code=503)


@ops.get("/metrics", summary="Prometheus metrics", response_class=Response,
         responses={200: {"content": {"text/plain": {}}}, 401: {"model": ErrorResponse}})
async def prometheus_metrics() -> Response:
    from prometheus_client import CONTENT_TYPE_LATEST

    return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)


# -- background tasks ------------------------------------------------------------------------
def remove_expired(store, files, worker, now: float | None = None) -> list[str]:
    removed = []
    for job_id in store.expired(time.time() if now is None else now):
        if store.delete(job_id) is None:
            continue
        if worker.cancel(job_id, delete_files=True) is None:
            files.remove(job_id)
        removed.append(job_id)
        log.info("job expired and removed", extra={"job_id": job_id})
    return removed


def remove_orphans(store, files) -> list[str]:
    """Video directories without a job record (a crash between delete and rmtree)."""
    orphans = []
    for d in files.root.iterdir():
        if d.is_dir() and VIDEO_ID.fullmatch(d.name) and store.get(d.name) is None:
            files.remove(d.name)
            orphans.append(d.name)
    return orphans


async def _cleanup_loop(app: FastAPI) -> None:
    s = app.state
    while True:
        try:
            await asyncio.get_running_loop().run_in_executor(None, remove_expired, s.store, s.files, s.worker)
        except Exception:  # noqa: BLE001 - keep cleaning on the next tick
            log.exception("cleanup failed")
        await asyncio.sleep(s.settings.cleanup_interval_seconds)


# -- the app ---------------------------------------------------------------------------------
def _make_hub(files: JobFiles):
    try:
        from sana_serve.server.hub import InProcessBlockHub
    except ImportError:
        log.warning("server.hub is not available: no live block streaming")
        return None
    return InProcessBlockHub(files.dir)


def create_app(settings: ServerSettings, cluster=None, role: str = "serve") -> FastAPI:
    """role "serve": the embedded server (SQLite, in-process hub, the worker thread, one process).
    role "api" / "worker" (with `cluster`, server.cluster.ClusterSettings): the same parts over
    Redis and the shared storage; a worker's HTTP side is only health and metrics."""
    if role not in ("serve", "api", "worker"):
        raise ValueError(f"unknown role {role!r}")
    from sana_serve.engine.load import default_config_name

    # fast (YAML); fails early on a bad --config. None: the one that matches --checkpoint
    model_config = load_config(settings.config or default_config_name(settings.checkpoint))

    def load():
        from sana_serve.engine.load import load_engine

        return load_engine(model_config, checkpoint=settings.checkpoint, device=settings.device,
                           precision=settings.precision, kernels=settings.kernels, compile=settings.compile,
                           batch_invariant=settings.batch_invariant)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        data_dir = settings.data_dir.resolve()
        data_dir.mkdir(parents=True, exist_ok=True)
        if role == "serve":
            store = SqliteJobStore(data_dir / "jobs.sqlite3")
            files = JobFiles(data_dir)
            hub = _make_hub(files)
            output_factory = None
            if settings.keep_frames:
                from sana_serve.server.outputs import JobOutput

                output_factory = functools.partial(JobOutput, keep_frames=True)
            worker = Worker(settings, store, files, load, hub=hub, output_factory=output_factory)
        else:
            from sana_serve.server import cluster as cluster_parts

            store, files, hub, worker = await asyncio.to_thread(cluster_parts.build, role, settings, cluster,
                                                                model_config, load)
            cluster_parts.watch_cluster(store, worker, cluster.lease_seconds)
        app.state.settings, app.state.model_config = settings, model_config
        app.state.store, app.state.files, app.state.hub, app.state.worker = store, files, hub, worker
        metrics.watch_store(store.counts)
        if role == "serve":
            orphans = remove_orphans(store, files)
            if orphans:
                log.info("removed %d orphaned video directories", len(orphans))
        worker.start()
        # Expiry runs where the API is (any number of API nodes may race for a job: one wins).
        cleanup = asyncio.create_task(_cleanup_loop(app)) if role != "worker" else None
        log.info("%s: model %s, data in %s", role, model_config.name,
                 data_dir if role == "serve" else f"{cluster.store_url} + {cluster.storage}")
        try:
            yield
        finally:
            if cleanup is not None:
                cleanup.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await cleanup
            await asyncio.get_running_loop().run_in_executor(None, worker.stop)
            metrics.watch_store(None)
            if role != "serve":
                cluster_parts.watch_cluster(None)
            store.close()

    app = FastAPI(title="sana-serve", version="0.1.0", lifespan=lifespan,
                  description="Streaming text-to-video (block-autoregressive linear DiT). OpenAI Videos API "
                              "compatible; see DESIGN.md.")
    install_error_handlers(app)
    _document_model_limits(app, model_config)
    app.include_router(ops)
    if role != "worker":
        app.include_router(videos)
        try:
            from sana_serve.server import ws
        except ImportError:
            ws = None
        if ws is not None and getattr(ws, "router", None) is not None:
            app.include_router(ws.router)
    app.add_middleware(Guard, settings=settings)
    if settings.cors_origins:  # outermost, so even 401/413 answers carry CORS headers
        app.add_middleware(CORSMiddleware, allow_origins=list(settings.cors_origins), allow_methods=["*"],
                           allow_headers=["*"], expose_headers=["Retry-After", "Content-Range", "Accept-Ranges"])
    return app


def _document_model_limits(app: FastAPI, cfg) -> None:
    """Put the served model's limits into /openapi.json, so clients (and fuzzers) see what is valid."""
    def openapi():
        if app.openapi_schema is None:
            from fastapi.openapi.utils import get_openapi

            schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            lim, v = cfg.limits, cfg.video
            body = schema["paths"]["/v1/videos"]["post"]["requestBody"]["content"]
            for media in body.values():
                props = media["schema"]["properties"]
                props["prompt"].update(minLength=1, maxLength=lim.max_prompt_chars)
                props["negative_prompt"]["maxLength"] = lim.max_prompt_chars
                for name, bounds in (("num_inference_steps", {"minimum": 1, "maximum": lim.max_steps}),
                                     ("guidance_scale", {"minimum": lim.min_guidance, "maximum": lim.max_guidance}),
                                     ("size", {"enum": [f"{v.width}x{v.height}"]}), ("fps", {"enum": [v.fps]}),
                                     ("model", {"enum": [cfg.name]})):
                    for option in props[name].get("anyOf", [props[name]]):
                        if option.get("type") != "null":
                            option.update(bounds)
                props["seconds"]["description"] += f" At most {lim.max_seconds:g} for this model."
                for option in props["seconds"]["anyOf"]:
                    if option.get("type") == "number":
                        option.update(exclusiveMinimum=0, maximum=lim.max_seconds)
                    elif option.get("type") == "string":
                        option["pattern"] = r"^[0-9]+(\.[0-9]*)?$"
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi


# -- logging and `sana-serve serve` ------------------------------------------------------------
class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, and job_id when the record carries one."""

    def format(self, record: logging.LogRecord) -> str:
        out = {"ts": round(record.created, 3), "level": record.levelname.lower(), "logger": record.name,
               "msg": record.getMessage()}
        job_id = getattr(record, "job_id", None)
        if job_id is not None:
            out["job_id"] = job_id
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        job_id = getattr(record, "job_id", None)
        base = f"{self.formatTime(record)} {record.levelname.lower()} {record.name}"
        line = f"{base} {'job_id=' + job_id + ' ' if job_id else ''}msg={record.getMessage()!r}"
        return line + ("\n" + self.formatException(record.exc_info) if record.exc_info else "")


def configure_logging(fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True


def serve(args, role: str = "serve") -> int:
    """`sana-serve serve|api|worker ...` (sana_serve/cli.py hands over the parsed arguments)."""
    import uvicorn

    from sana_serve.server.config import settings_from_args

    settings = settings_from_args(args)
    cluster = None
    if role != "serve":
        from sana_serve.server.config import cluster_settings_from_args

        cluster = cluster_settings_from_args(args)
        # Bad options and an unreachable Redis are one clear line before the server starts.
        import redis

        from sana_serve.server.cluster import wait_for_redis
        from sana_serve.server.storage import check_storage_spec

        check_storage_spec(cluster.storage)
        # A plain client (no retries of its own): --redis-wait is the whole wait.
        wait_for_redis(redis.Redis.from_url(cluster.store_url, socket_connect_timeout=2), cluster.store_url,
                       timeout=args.redis_wait)
    configure_logging(settings.log_format)
    app = create_app(settings, cluster, role)
    uvicorn.run(app, host=settings.host, port=settings.port, log_config=None, proxy_headers=False,
                timeout_graceful_shutdown=10)
    return 0
