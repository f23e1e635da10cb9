"""Request and response bodies of the HTTP API (OpenAI Videos API compatible, plus extensions).

The shapes follow the official `openai` SDK's types (openai/types/video*.py): a `Video`
object, a cursor page for lists, `video.deleted` for DELETE, and OpenAI's error envelope.
Limits that depend on the served model (max seconds, steps, guidance range, prompt length,
sizes, fps) are checked in server.validation and written into /openapi.json by server.app.
"""
from __future__ import annotations

import re
from typing import Annotated, Literal, Optional, Union

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator

JobStatus = Literal["queued", "in_progress", "completed", "failed", "cancelled"]
VIDEO_ID = re.compile(r"^video_[0-9a-f]{32}$")


class APIError(Exception):
    """A client-visible error: rendered as {"error": {message, type, param, code}}."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type: str = "invalid_request_error", headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type
        self.headers = headers or {}


# -- errors ----------------------------------------------------------------------------------
class ErrorDetail(BaseModel):
    message: str
    type: str
    param: Optional[str] = None
    code: Optional[str] = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


# -- requests --------------------------------------------------------------------------------
def _integral(value):
    """JSON Schema's integer includes 4.0: take it as 4 (JSON bodies are validated strictly)."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


# (bounds before the validator: pydantic puts them into the JSON schema only in that order)
Integer = Annotated[int, BeforeValidator(_integral)]
Seed = Annotated[int, Field(ge=0, le=2**63 - 1), BeforeValidator(_integral)]
Priority = Annotated[int, Field(ge=-100, le=100), BeforeValidator(_integral)]


class CreateVideoRequest(BaseModel):
    """POST /v1/videos, as JSON or multipart/form-data (what the openai SDK sends)."""

    model_config = ConfigDict(extra="ignore")  # the SDK may send fields we do not use (input_reference)

    prompt: str = Field(description="What the video shows.")
    model: Optional[str] = Field(None, description="Model name; defaults to the served model.")
    seconds: Union[str, float, None] = Field(None, description="Duration in seconds (string or number); the "
                                             "frame count is the nearest the model makes (Wan VAE: 1 + 4k).")
    frames: Optional[Integer] = Field(None, description="Extension: exact frame count instead of seconds "
                                                    "(Wan VAE models: 1 + 4k, e.g. 81).")
    size: Optional[str] = Field(None, description="'WxH': the served model's size, or one of its checkpoint's "
                                                  "resolution bins.")
    negative_prompt: Optional[str] = Field("", description="Extension: what to steer away from (with guidance > 1).")
    seed: Optional[Seed] = Field(
        None, description="Extension: noise seed (random if unset).")
    num_inference_steps: Optional[Integer] = Field(None, description="Extension: denoising steps per block.")
    guidance_scale: Optional[float] = Field(None, description="Extension: classifier-free guidance scale.")
    fps: Optional[Integer] = Field(None, description="Extension: must equal the served model's fps.")
    priority: Priority = Field(0, description="Extension: higher runs first; FIFO within a priority.")

    @field_validator("negative_prompt", mode="before")
    @classmethod
    def _none_is_empty(cls, v):
        return "" if v is None else v


def format_seconds(value: float) -> str:
    return f"{value:g}"


# -- responses -------------------------------------------------------------------------------
class VideoError(BaseModel):
    code: str
    message: str


class Video(BaseModel):
    """The video object (openai.types.Video), plus a few read-only extensions."""

    id: str
    object: Literal["video"] = "video"
    model: str
    status: JobStatus
    progress: int = Field(ge=0, le=100, description="Percent of blocks finished.")
    created_at: int
    completed_at: Optional[int] = None
    expires_at: Optional[int] = None
    prompt: Optional[str] = None
    size: str
    seconds: str
    error: Optional[VideoError] = None
    remixed_from_video_id: Optional[str] = None
    # extensions
    seed: int
    priority: int = 0
    num_blocks: int = Field(description="Blocks in the whole video.")
    blocks_completed: int = Field(description="Blocks finished so far (each is streamable at once).")


class VideoList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Video]
    first_id: Optional[str] = None
    last_id: Optional[str] = None
    has_more: bool = False


class VideoDeleted(BaseModel):
    id: str
    object: Literal["video.deleted"] = "video.deleted"
    deleted: bool = True


class Health(BaseModel):
    status: str
    detail: Optional[str] = None
