"""The playground page: GET / and GET /static/{name} (sana_serve/server/static/, no build step)."""
from __future__ import annotations

import json
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, Response

router = APIRouter()

STATIC_DIR = Path(__file__).resolve().parents[1] / "static"
_STATIC_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                 ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml", ".png": "image/png"}


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
