"""Every error is OpenAI's envelope {"error": {"message", "type", "param", "code"}}.

Request validation failures are 400s whose `param` names the field, unknown ids 404, a full
queue 429 with Retry-After, a missing or wrong API key 401, an oversized body 413, a method a
path does not have 405 with an `Allow` header listing the ones it has.
"""
from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from sana_serve.server.schemas import APIError

log = logging.getLogger("sana_serve.server")


def error_response(status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                   code: str | None = None, headers: dict | None = None) -> JSONResponse:
    body = {"error": {"message": message, "type": type, "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


def _field(loc) -> str | None:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header", "form")]
    return ".".join(parts) or None


def validation_error(errors: list[dict]) -> APIError:
    first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
    param = _field(first.get("loc", ()))
    message = first.get("msg", "invalid value")
    return APIError(400, f"{param}: {message}" if param else message, param, "invalid_value")


class BodyTooLarge(APIError):
    def __init__(self, limit: int):
        super().__init__(413, f"request body is larger than {limit} bytes", None, "body_too_large")


HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def allowed_methods(app: FastAPI, scope) -> list[str]:
    """Every method some route of the app answers at this request's path (for 405's Allow)."""
    probe = {"type": "http", "path": scope["path"], "root_path": scope.get("root_path", "")}
    return [method for method in HTTP_METHODS
            if any(route.matches({**probe, "method": method})[0] == Match.FULL for route in app.router.routes)]


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(_, exc: APIError):
        return error_response(exc.status, exc.message, exc.type, exc.param, exc.code, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _request_validation(_, exc: RequestValidationError):
        e = validation_error(list(exc.errors()))
        return error_response(e.status, e.message, e.type, e.param, e.code)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        headers = dict(getattr(exc, "headers", None) or {})
        if exc.status_code == 405:  # starlette names only the first matching route's methods
            headers["Allow"] = ", ".join(allowed_methods(app, request.scope))
        return error_response(exc.status_code, str(exc.detail), kind, None, code, headers or None)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, "internal server error", "server_error", None, "internal_error")
