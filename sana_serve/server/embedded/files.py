"""The embedded JobFiles: one directory per job under data_dir/videos/<id>/.

It holds what JobOutput writes (init segment, fMP4 segments, video.mp4, thumbnail.png, raw
frames with --keep-frames) and the rollout checkpoint. This class is the only place that
turns an id into a path, and it accepts only ids of the form `video_<32 hex>`.
"""
from __future__ import annotations

import io
import os
import shutil
from pathlib import Path
from typing import Optional

from sana_serve.server.jobs import check_job_id
from sana_serve.server.outputs import JobOutput, write_atomic
from sana_serve.server.schemas import VIDEO_ID


class LocalJobFiles:
    CHECKPOINT = "rollout.ckpt"

    def __init__(self, data_dir: str | os.PathLike, keep_frames: bool = False):
        self.root = Path(data_dir).resolve() / "videos"
        self.root.mkdir(parents=True, exist_ok=True)
        self.keep_frames = keep_frames

    def dir(self, job_id: str) -> Path:
        return self.root / check_job_id(job_id)

    def open_output(self, job_id: str, width: int, height: int, fps: float, frames_per_block: int) -> JobOutput:
        return JobOutput(self.dir(job_id), width, height, fps, frames_per_block, keep_frames=self.keep_frames)

    def fetch(self, job_id: str) -> None:
        """Nothing to fetch: the blocks are already here (the id is still checked, as every method does)."""
        self.dir(job_id)

    def save_checkpoint(self, job_id: str, snapshot: dict) -> None:
        """Atomically replace the job's rollout checkpoint."""
        import torch

        d = self.dir(job_id)
        d.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        torch.save(snapshot, buf)
        write_atomic(d / self.CHECKPOINT, buf.getbuffer())

    def load_checkpoint(self, job_id: str) -> Optional[dict]:
        import torch

        path = self.dir(job_id) / self.CHECKPOINT
        if not path.is_file():
            return None
        return torch.load(path, map_location="cpu", weights_only=True)

    def drop_checkpoint(self, job_id: str) -> None:
        (self.dir(job_id) / self.CHECKPOINT).unlink(missing_ok=True)

    def remove(self, job_id: str) -> None:
        shutil.rmtree(self.dir(job_id), ignore_errors=True)

    def replay_reader(self, job_id: str) -> Optional[JobOutput]:
        return JobOutput.reader(self.dir(job_id))

    def local_file(self, job_id: str, name: str) -> Optional[Path]:
        path = self.dir(job_id) / name
        return path if path.is_file() else None

    def job_ids(self) -> list[str]:
        """Ids that have a directory (for finding orphans)."""
        return [d.name for d in self.root.iterdir() if d.is_dir() and VIDEO_ID.fullmatch(d.name)]


def remove_orphans(records, files: LocalJobFiles) -> list[str]:
    """Video directories without a job record (a crash between delete and rmtree)."""
    orphans = [job_id for job_id in files.job_ids() if records.get(job_id) is None]
    for job_id in orphans:
        files.remove(job_id)
    return orphans
