"""The parts a handler needs, through FastAPI's Depends (HTTP and websocket handlers alike).

`create_app` puts the backend's Parts and the settings on `app.state`; nothing else reads
`app.state`.
"""
from __future__ import annotations

from typing import Annotated

from fastapi import Depends
from starlette.requests import HTTPConnection

from sana_serve.engine.config import ModelConfig
from sana_serve.server.config import ServerSettings
from sana_serve.server.interfaces import BlockHub, JobFiles, JobRecords, Runner
from sana_serve.server.jobs import Job
from sana_serve.server.schemas import VIDEO_ID, APIError


def get_settings(conn: HTTPConnection) -> ServerSettings:
    return conn.app.state.settings


def get_records(conn: HTTPConnection) -> JobRecords:
    return conn.app.state.parts.records


def get_files(conn: HTTPConnection) -> JobFiles:
    return conn.app.state.parts.files


def get_hub(conn: HTTPConnection) -> BlockHub:
    return conn.app.state.parts.hub


def get_runner(conn: HTTPConnection) -> Runner:
    return conn.app.state.parts.runner


def get_model_config(conn: HTTPConnection) -> ModelConfig:
    return conn.app.state.parts.model_config


Settings = Annotated[ServerSettings, Depends(get_settings)]
Records = Annotated[JobRecords, Depends(get_records)]
Files = Annotated[JobFiles, Depends(get_files)]
Hub = Annotated[BlockHub, Depends(get_hub)]
TheRunner = Annotated[Runner, Depends(get_runner)]
Model = Annotated[ModelConfig, Depends(get_model_config)]


def not_found(video_id: str) -> APIError:
    return APIError(404, f"no video with id {video_id[:80]!r}", "video_id", "not_found")


def job_or_404(records: JobRecords, video_id: str) -> Job:
    job = records.get(video_id) if VIDEO_ID.fullmatch(video_id) else None
    if job is None:
        raise not_found(video_id)
    return job
