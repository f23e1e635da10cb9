"""Request and response bodies of the HTTP API (OpenAI Videos API compatible, plus extensions).

The shapes follow the official `openai` SDK's types (openai/types/video*.py): a `Video`
object, a cursor page for lists, `video.deleted` for DELETE, and OpenAI's error envelope.
Field-level limits that depend on the model (max seconds, steps, guidance range, prompt
length, the one servable size and fps) are checked by `validate_create` against the model
config, so a bad value is a 400 naming the field, never a 500.
"""
from __future__ import annotations

import math
import re
from typing import Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator

from sana_serve.engine.config import ModelConfig

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
class CreateVideoRequest(BaseModel):
    """POST /v1/videos, as JSON or multipart/form-data (what the openai SDK sends)."""

    model_config = ConfigDict(extra="ignore")  # the SDK may send fields we do not use (input_reference)

    prompt: str = Field(description="What the video shows.")
    model: Optional[str] = Field(None, description="Model name; defaults to the served model.")
    seconds: Union[str, float, None] = Field(None, description="Duration in seconds (string or number); the "
                                             "frame count is the nearest the model makes (Wan VAE: 1 + 4k).")
    frames: Optional[int] = Field(None, description="Extension: exact frame count instead of seconds "
                                                    "(Wan VAE models: 1 + 4k, e.g. 81).")
    size: Optional[str] = Field(None, description="'WxH': the served model's size, or one of its checkpoint's "
                                                  "resolution bins.")
    negative_prompt: str = Field("", description="Extension: what to steer away from (with guidance > 1).")
    seed: Optional[int] = Field(None, ge=0, le=2**63 - 1, description="Extension: noise seed (random if unset).")
    num_inference_steps: Optional[int] = Field(None, description="Extension: denoising steps per block.")
    guidance_scale: Optional[float] = Field(None, description="Extension: classifier-free guidance scale.")
    fps: Optional[int] = Field(None, description="Extension: must equal the served model's fps.")
    priority: int = Field(0, ge=-100, le=100, description="Extension: higher runs first; FIFO within a priority.")

    @field_validator("negative_prompt", mode="before")
    @classmethod
    def _none_is_empty(cls, v):
        return "" if v is None else v


def parse_seconds(value) -> float:
    """'4', '2.5', 4, 4.0 -> float; anything else raises ValueError."""
    if isinstance(value, bool):
        raise ValueError("seconds must be a number")
    if isinstance(value, str):
        value = value.strip()
        if not re.fullmatch(r"[0-9]+(\.[0-9]*)?|\.[0-9]+", value):
            raise ValueError(f"seconds must be a positive number, got {value[:40]!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError("seconds must be a finite number")
    return value


def format_seconds(value: float) -> str:
    return f"{value:g}"


def validate_create(req: CreateVideoRequest, cfg: ModelConfig, default_seconds: float) -> dict:
    """Check a create request against the served model; the normalised job parameters."""
    lim, video = cfg.limits, cfg.video
    if not req.prompt.strip():
        raise APIError(400, "prompt must be a non-empty string", "prompt", "invalid_value")
    if len(req.prompt) > lim.max_prompt_chars:
        raise APIError(400, f"prompt is {len(req.prompt)} characters; the limit is {lim.max_prompt_chars}",
                       "prompt", "invalid_value")
    if "\x00" in req.prompt or "\x00" in req.negative_prompt:
        raise APIError(400, "prompt must not contain NUL characters", "prompt", "invalid_value")
    if len(req.negative_prompt) > lim.max_prompt_chars:
        raise APIError(400, f"negative_prompt is {len(req.negative_prompt)} characters; the limit is "
                            f"{lim.max_prompt_chars}", "negative_prompt", "invalid_value")
    if req.model is not None and req.model != cfg.name:
        raise APIError(400, f"model {req.model[:80]!r} is not served here; this server serves {cfg.name!r}",
                       "model", "model_not_found")
    if req.frames is not None:
        if req.seconds is not None:
            raise APIError(400, "give seconds or frames, not both", "frames", "invalid_value")
        if req.frames < 1:
            raise APIError(400, f"frames must be a positive integer, got {req.frames}", "frames", "invalid_value")
        if req.frames > lim.max_seconds * video.fps:
            raise APIError(400, f"frames must be at most {int(lim.max_seconds * video.fps)} for this model, got "
                                f"{req.frames}", "frames", "invalid_value")
    try:
        seconds = default_seconds if req.seconds is None else parse_seconds(req.seconds)
    except (ValueError, TypeError, OverflowError) as e:
        raise APIError(400, str(e), "seconds", "invalid_value") from None
    if req.frames is not None:
        seconds = req.frames / video.fps  # stored as seconds: the engine maps it back to exactly `frames`
    if seconds <= 0:
        raise APIError(400, f"seconds must be positive, got {seconds:g}", "seconds", "invalid_value")
    if seconds > lim.max_seconds:
        raise APIError(400, f"seconds must be at most {lim.max_seconds:g} for this model, got {seconds:g}",
                       "seconds", "invalid_value")
    if round(seconds * video.fps) < 1:
        raise APIError(400, f"seconds={seconds:g} is shorter than one frame at {video.fps} fps",
                       "seconds", "invalid_value")
    size = f"{video.width}x{video.height}"
    if req.size is not None:  # which sizes the model serves is the engine's to say (its checkpoint's bins)
        m = re.fullmatch(r"\s*(\d{1,5})x(\d{1,5})\s*", req.size.lower())
        if m is None or int(m[1]) < 1 or int(m[2]) < 1:
            raise APIError(400, f"size must be 'WIDTHxHEIGHT' (the served model's is {size!r}), got {req.size[:40]!r}",
                           "size", "invalid_value")
        size = f"{int(m[1])}x{int(m[2])}"
    if req.fps is not None and req.fps != video.fps:
        raise APIError(400, f"fps must be {video.fps} for model {cfg.name!r}, got {req.fps}", "fps", "invalid_value")
    steps = req.num_inference_steps
    if steps is not None and not (1 <= steps <= lim.max_steps):
        raise APIError(400, f"num_inference_steps must be between 1 and {lim.max_steps}, got {steps}",
                       "num_inference_steps", "invalid_value")
    g = req.guidance_scale
    if g is not None and not (math.isfinite(g) and lim.min_guidance <= g <= lim.max_guidance):
        raise APIError(400, f"guidance_scale must be between {lim.min_guidance:g} and {lim.max_guidance:g}, got {g}",
                       "guidance_scale", "invalid_value")
    return {
        "prompt": req.prompt, "negative_prompt": req.negative_prompt, "seconds": seconds, "frames": req.frames,
        "size": size,
        "seed": req.seed, "num_inference_steps": steps, "guidance_scale": g, "priority": req.priority,
    }


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
