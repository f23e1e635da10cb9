"""A job's record, shared by both backends: what a `POST /v1/videos` asks for and how far it got."""
from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field

from sana_serve.engine.rollout import GenerationRequest
from sana_serve.server.schemas import VIDEO_ID
from sana_serve.server.validation import parse_size

ACTIVE = ("queued", "in_progress")
FINISHED = ("completed", "failed", "cancelled")


class QueueFull(Exception):
    def __init__(self, queued: int):
        super().__init__(f"{queued} jobs are already queued")
        self.queued = queued


def new_job_id() -> str:
    return "video_" + secrets.token_hex(16)


def check_job_id(job_id: str) -> str:
    """`job_id` if it is a video id (the only names that become paths or keys), else ValueError."""
    if not isinstance(job_id, str) or not VIDEO_ID.fullmatch(job_id):
        raise ValueError(f"not a video id: {job_id!r}")
    return job_id


@dataclass
class Job:
    id: str
    model: str
    prompt: str
    seconds: float  # as the client asked (or frames / fps): the video object's `seconds`
    size: str  # "WxH", validated
    seed: int
    num_blocks: int
    negative_prompt: str = ""
    num_inference_steps: int | None = None
    guidance_scale: float | None = None
    priority: int = 0
    frames: int | None = None  # the exact frame count the engine makes; None: derived from seconds
    status: str = "queued"
    blocks_completed: int = 0
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    completed_at: float | None = None
    expires_at: float | None = None
    error_code: str | None = None
    error_message: str | None = None
    seq: int = 0  # insertion order (FIFO tie-break), set by the store

    @property
    def progress(self) -> int:
        if self.status == "completed":
            return 100
        return int(100 * self.blocks_completed / self.num_blocks) if self.num_blocks else 0

    def request(self) -> GenerationRequest:
        """What the engine runs for this job."""
        width, height = parse_size(self.size)
        return GenerationRequest(prompt=self.prompt, seconds=self.seconds, seed=self.seed,
                                 negative_prompt=self.negative_prompt, num_inference_steps=self.num_inference_steps,
                                 guidance_scale=self.guidance_scale, frames=self.frames, width=width, height=height)
