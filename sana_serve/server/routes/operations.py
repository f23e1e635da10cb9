"""Health, readiness and Prometheus metrics."""
from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response

from sana_serve.server import metrics
from sana_serve.server.deps import TheRunner
from sana_serve.server.schemas import ErrorResponse, Health

router = APIRouter(tags=["operations"])


@router.get("/healthz", response_model=Health, summary="Liveness: the process answers")
async def healthz() -> Health:
    return Health(status="ok")


@router.get("/readyz", response_model=Health, summary="Readiness: the model is loaded",
            responses={503: {"model": Health}})
async def readyz(runner: TheRunner):
    if runner.ready.is_set():
        return Health(status="ready")
    detail = "loading the model" if runner.load_error is None else f"model failed to load: {runner.load_error}"
    return JSONResponse(Health(status="not_ready", detail=detail).model_dump(), status_code=503)


@router.get("/metrics", summary="Prometheus metrics", response_class=Response,
            responses={200: {"content": {"text/plain": {}}}, 401: {"model": ErrorResponse}})
async def prometheus_metrics() -> Response:
    from prometheus_client import CONTENT_TYPE_LATEST

    return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)
