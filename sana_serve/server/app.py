"""The FastAPI application over a backend's parts; `sana-serve serve|api|worker` runs it.

    parts = embedded.build(settings)               # or cluster.build(settings, cluster, role)
    app = create_app(parts, settings)

`create_app` includes the routers (server.routes), the error handlers (server.errors), the
auth / body-limit guard and CORS, and runs the parts' runner (and expiry) for the app's
lifetime. Handlers reach the parts through server.deps. The model loads on the worker thread
after startup: /readyz answers 503 until it is in.
"""
from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import logging
import sys
import time

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from sana_serve.server import metrics
from sana_serve.server.config import ServerSettings, bearer_token
from sana_serve.server.errors import BodyTooLarge, error_response, install_error_handlers
from sana_serve.server.interfaces import JobRecords, Parts, Runner
from sana_serve.server.routes import operations, page, realtime, streaming, videos

log = logging.getLogger("sana_serve.server")


# -- auth and body size (pure ASGI, so they cover every route, websockets included) ----------------
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




# -- expiry ------------------------------------------------------------------------------------
def remove_expired(records: JobRecords, runner: Runner, now: float | None = None) -> list[str]:
    """Delete finished jobs past their expiry, records and files (any number of API nodes may
    race for a job: one wins)."""
    removed = []
    for job_id in records.expired(time.time() if now is None else now):
        job = records.delete(job_id)
        if job is None:
            continue
        runner.cancel(job, delete=True)
        removed.append(job_id)
        log.info("job expired and removed", extra={"job_id": job_id})
    return removed


async def _cleanup_loop(parts: Parts, interval: float) -> None:
    while True:
        try:
            await asyncio.to_thread(remove_expired, parts.records, parts.runner)
        except Exception:  # noqa: BLE001 - keep cleaning on the next tick
            log.exception("cleanup failed")
        await asyncio.sleep(interval)


# -- the app ---------------------------------------------------------------------------------
def create_app(parts: Parts, settings: ServerSettings) -> FastAPI:
    """Serve `parts` (what embedded.build or cluster.build returned)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        metrics.watch_store(parts.records.counts)
        for hook in parts.on_start:
            await asyncio.to_thread(hook)
        parts.runner.start()
        cleanup = (asyncio.create_task(_cleanup_loop(parts, settings.cleanup_interval_seconds))
                   if parts.expires_jobs else None)
        log.info("serving model %s, data in %s", parts.model_config.name, parts.description)
        try:
            yield
        finally:
            if cleanup is not None:
                cleanup.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await cleanup
            await asyncio.to_thread(parts.runner.stop)
            metrics.watch_store(None)
            for hook in parts.on_stop:
                hook()
            parts.close()

    app = FastAPI(title="sana-serve", version="0.1.0", lifespan=lifespan,
                  description="Streaming text-to-video (block-autoregressive linear DiT), compatible with the "
                              "OpenAI Videos API. Live blocks stream as fragmented MP4 over "
                              "WS /v1/videos/{id}/stream; WS /v1/realtime runs an endless, steerable stream.")
    app.state.parts, app.state.settings = parts, settings
    install_error_handlers(app)
    _document_model_limits(app, parts)
    app.include_router(operations.router)
    if parts.serves_api:
        app.include_router(videos.router)
        app.include_router(streaming.router)
        app.include_router(realtime.router)
        app.include_router(page.router)
    app.add_middleware(Guard, settings=settings)
    if settings.cors_origins:  # outermost, so even 401/413 answers carry CORS headers
        app.add_middleware(CORSMiddleware, allow_origins=list(settings.cors_origins), allow_methods=["*"],
                           allow_headers=["*"], expose_headers=["Retry-After", "Content-Range", "Accept-Ranges"])
    return app


def _document_model_limits(app: FastAPI, parts: Parts) -> None:
    """Write every limit the server enforces on a create request into /openapi.json (the same
    values server.validation checks), so clients and fuzzers see exactly what is valid. The
    served model's rules (sizes, frame counts) are known once it is loaded (on an API node: once
    a worker registered it); until then the document is rebuilt on every request."""
    from fastapi.openapi.utils import get_openapi

    from sana_serve.server.validation import NO_NUL_PATTERN, PROMPT_PATTERN, min_seconds, seconds_pattern

    def bound(prop: dict, **constraints) -> None:
        for option in prop.get("anyOf", [prop]):
            if option.get("type") not in (None, "null"):
                option.update(constraints)

    def openapi():
        if app.openapi_schema is not None:
            return app.openapi_schema
        cfg, rules = parts.model_config, parts.runner.rules
        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        create = schema["paths"].get("/v1/videos", {}).get("post")
        if create is not None:
            lim, v = cfg.limits, cfg.video
            max_frames = int(lim.max_seconds * v.fps)
            for media in create["requestBody"]["content"].values():
                body = media["schema"]
                props = body["properties"]
                props["prompt"].update(minLength=1, maxLength=lim.max_prompt_chars, pattern=PROMPT_PATTERN)
                bound(props["negative_prompt"], maxLength=lim.max_prompt_chars, pattern=NO_NUL_PATTERN)
                bound(props["num_inference_steps"], minimum=1, maximum=lim.max_steps)
                bound(props["guidance_scale"], minimum=lim.min_guidance, maximum=lim.max_guidance)
                bound(props["fps"], enum=[v.fps])
                bound(props["model"], enum=[cfg.name])
                sizes = rules.allowed_sizes() if rules is not None else [(v.width, v.height)]
                if sizes is not None:
                    bound(props["size"], enum=[f"{w}x{h}" for w, h in sizes])
                else:
                    bound(props["size"], pattern=r"^[1-9][0-9]{0,4}x[1-9][0-9]{0,4}$")
                    props["size"]["description"] += (f" Both sides multiples of {rules.size_multiple}, at most "
                                                     f"{v.width * v.height} pixels.")
                for option in props["seconds"]["anyOf"]:
                    if option.get("type") == "number":
                        option.update(exclusiveMinimum=min_seconds(cfg, rules), maximum=lim.max_seconds)
                    elif option.get("type") == "string":
                        option["pattern"] = seconds_pattern(cfg, rules)
                props["seconds"]["description"] += (f" At most {lim.max_seconds:g} for this model; as a string, "
                                                     f"at most two decimals.")
                if rules is not None and rules.first_frame_alone and max_frames <= 1024:
                    bound(props["frames"], enum=[f for f in range(1, max_frames + 1) if rules.valid_frames(f)])
                else:
                    bound(props["frames"], minimum=1, maximum=max_frames)
                # seconds or frames, not both
                body["not"] = {"required": ["seconds", "frames"], "properties": {
                    "seconds": {"not": {"type": "null"}}, "frames": {"not": {"type": "null"}}}}
            form = create["requestBody"]["content"].get("multipart/form-data")
            if form is not None:  # a form has no null: a field is sent or left out
                form["schema"] = copy.deepcopy(form["schema"])
                for prop in form["schema"]["properties"].values():
                    if "anyOf" in prop:
                        prop["anyOf"] = [o for o in prop["anyOf"] if o.get("type") != "null"]
                seconds = form["schema"]["properties"]["seconds"]  # and every value is text: the string form
                seconds["anyOf"] = [o for o in seconds["anyOf"] if o.get("type") == "string"]
                form["schema"].pop("not")
                form["schema"]["not"] = {"required": ["seconds", "frames"]}
        if rules is not None:
            app.openapi_schema = schema
        return schema

    app.openapi = openapi


# -- logging and `sana-serve serve|api|worker` ---------------------------------------------------
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


def build_parts(args, role: str, settings: ServerSettings) -> Parts:
    """The backend for `role`: "serve" (embedded) or "api" / "worker" (cluster)."""
    if role == "serve":
        from sana_serve.server import embedded

        return embedded.build(settings)
    import redis

    from sana_serve.server import cluster
    from sana_serve.server.config import cluster_settings_from_args

    cluster_settings = cluster_settings_from_args(args)
    # Bad options and an unreachable Redis are one clear line before the server starts.
    cluster.check_storage_spec(cluster_settings.storage)
    # A plain client (no retries of its own): --redis-wait is the whole wait.
    cluster.wait_for_redis(redis.Redis.from_url(cluster_settings.store_url, socket_connect_timeout=2),
                           cluster_settings.store_url, timeout=args.redis_wait)
    return cluster.build(settings, cluster_settings, role)


def serve(args, role: str = "serve") -> int:
    """`sana-serve serve|api|worker ...` (sana_serve/cli.py hands over the parsed arguments)."""
    import uvicorn

    from sana_serve.server.config import settings_from_args

    settings = settings_from_args(args)
    parts = build_parts(args, role, settings)
    configure_logging(settings.log_format)
    app = create_app(parts, settings)
    uvicorn.run(app, host=settings.host, port=settings.port, log_config=None, proxy_headers=False,
                timeout_graceful_shutdown=10)
    return 0
