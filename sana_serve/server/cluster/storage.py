"""Storage shared by every node of a cluster: segments, checkpoints, final MP4s, thumbnails.

One small interface, `Storage` (put / get / exists / list / delete a prefix, plus a local
path when the bytes are already on this host), with two implementations:
- `DirStorage`: a directory every node mounts (one host, or NFS); writes are tmp + rename.
- `S3Storage`: any S3-compatible store (`s3://bucket/prefix`, an endpoint URL for MinIO and
  friends) through boto3. A PUT is atomic there: readers see the old object or the new one.

Keys are `<video id>/<name as in a JobOutput directory>` (`stream.json`, `init.mp4`,
`segments/000003-000072-32.m4s`, `video.mp4`, `thumbnail.png`, `rollout.ckpt`).

The worker keeps writing a job through the ordinary `JobOutput` into a local scratch
directory (ffmpeg needs a process and local files) and `StoredJobOutput` copies each file
into the storage right after it is complete. With the worker's writer order this gives the
order resume relies on: a block's segment is stored, then the rollout checkpoint, then the
job's committed block count in the store. A worker that picks up a job somebody else
started first downloads what is stored (`StorageFiles.fetch`), so `JobOutput` resumes the
timeline where the stored segments end.

API nodes read through `StoredOutputReader`, the storage twin of JobOutput's read side, to
replay blocks to websocket viewers; finished files are served from `local_file` (the shared
directory itself, or a cached download from S3).
"""
from __future__ import annotations

import abc
import io
import json
import os
import re
import shutil
from pathlib import Path
from typing import Optional
from urllib.parse import urlparse

from sana_serve.server.jobs import check_job_id
from sana_serve.server.outputs import JobOutput, SegmentInfo, block_event, write_atomic

__all__ = ["Storage", "DirStorage", "S3Storage", "open_storage", "StorageFiles", "StoredJobOutput",
           "StoredOutputReader"]

_SEGMENT_NAME = re.compile(r"^(\d{6,})-(\d{6,})-(\d+)\.m4s$")


class Storage(abc.ABC):
    """Bytes under string keys. Thread-safe; every method is one short round trip."""

    url: str

    @abc.abstractmethod
    def put(self, key: str, data: bytes) -> None:
        """Store `data` at `key` atomically (a reader never sees a partial object)."""

    @abc.abstractmethod
    def get(self, key: str) -> bytes:
        """The bytes at `key`; FileNotFoundError if there are none."""

    @abc.abstractmethod
    def exists(self, key: str) -> bool: ...

    @abc.abstractmethod
    def list(self, prefix: str) -> list[str]:
        """Names (relative to `prefix`, which ends with '/') of the objects under it."""

    @abc.abstractmethod
    def delete(self, key: str) -> None:
        """Remove one object (no error if there is none)."""

    @abc.abstractmethod
    def delete_prefix(self, prefix: str) -> None:
        """Remove every object under `prefix` (no error if there are none)."""

    def local_path(self, key: str) -> Optional[Path]:
        """A path on this host holding `key`'s bytes, when the storage is a local or mounted one."""
        return None

    def put_file(self, key: str, path: Path) -> None:
        self.put(key, Path(path).read_bytes())


class DirStorage(Storage):
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.url = str(self.root)

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if self.root not in path.parents:
            raise ValueError(f"storage key outside the root: {key!r}")
        return path

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, data)

    def get(self, key: str) -> bytes:
        return self._path(key).read_bytes()

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str) -> list[str]:
        base = self._path(prefix.rstrip("/"))
        if not base.is_dir():
            return []
        out = []
        for dirpath, _, names in os.walk(base):
            for name in names:
                if not name.startswith("."):  # temporary files of a write in progress
                    out.append(str((Path(dirpath) / name).relative_to(base)))
        return out

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def delete_prefix(self, prefix: str) -> None:
        shutil.rmtree(self._path(prefix.rstrip("/")), ignore_errors=True)

    def local_path(self, key: str) -> Optional[Path]:
        path = self._path(key)
        return path if path.is_file() else None


class S3Storage(Storage):
    """`s3://bucket/prefix` through boto3. Credentials and region come from boto3's usual
    chain (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION, ~/.aws); the
    endpoint URL points it at MinIO, Ceph, moto or any other S3-compatible server."""

    def __init__(self, bucket: str, prefix: str = "", endpoint_url: Optional[str] = None):
        import boto3
        from botocore.config import Config

        self.bucket, self.prefix = bucket, prefix.strip("/")
        self.url = f"s3://{bucket}/{self.prefix}"
        self._s3 = boto3.client("s3", endpoint_url=endpoint_url,
                                config=Config(retries={"max_attempts": 5, "mode": "standard"},
                                              max_pool_connections=32))

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def put(self, key: str, data: bytes) -> None:
        self._s3.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)

    def get(self, key: str) -> bytes:
        try:
            return self._s3.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()
        except self._s3.exceptions.NoSuchKey:
            raise FileNotFoundError(key) from None

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self._s3.head_object(Bucket=self.bucket, Key=self._key(key))
            return True
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise

    def list(self, prefix: str) -> list[str]:
        full = self._key(prefix)
        out = []
        for page in self._s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=full):
            out.extend(obj["Key"][len(full):] for obj in page.get("Contents", ()))
        return out

    def delete(self, key: str) -> None:
        self._s3.delete_object(Bucket=self.bucket, Key=self._key(key))

    def delete_prefix(self, prefix: str) -> None:
        keys = [prefix + name for name in self.list(prefix)]
        for i in range(0, len(keys), 1000):  # DeleteObjects takes at most 1000 keys
            self._s3.delete_objects(Bucket=self.bucket, Delete={
                "Objects": [{"Key": self._key(k)} for k in keys[i:i + 1000]], "Quiet": True})


def check_storage_spec(spec: str) -> str:
    """The kind of storage `spec` names ("s3" | "dir"); ValueError with a clear message if none."""
    parsed = urlparse(spec)
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise ValueError(f"--storage {spec!r}: an S3 URL needs a bucket (s3://bucket/prefix)")
        return "s3"
    if parsed.scheme not in ("", "file"):
        raise ValueError(f"--storage {spec!r}: use a directory or s3://bucket/prefix")
    return "dir"


def open_storage(spec: str, endpoint_url: Optional[str] = None) -> Storage:
    """`s3://bucket/prefix` -> S3Storage; a directory path (or file:///path) -> DirStorage."""
    parsed = urlparse(spec)
    if check_storage_spec(spec) == "s3":
        return S3Storage(parsed.netloc, parsed.path, endpoint_url or os.environ.get("AWS_ENDPOINT_URL"))
    return DirStorage(parsed.path if parsed.scheme == "file" else spec)


class StorageFiles:
    """The cluster's JobFiles: checkpoints and outputs in the shared storage, and a local
    scratch directory per job for the worker's encoder (and an API node's S3 download cache)."""

    CHECKPOINT = "rollout.ckpt"

    def __init__(self, storage: Storage, scratch_dir: str | os.PathLike, keep_frames: bool = False):
        self.storage = storage
        self.root = Path(scratch_dir).resolve() / "videos"
        self.root.mkdir(parents=True, exist_ok=True)
        self.keep_frames = keep_frames

    def dir(self, job_id: str) -> Path:
        """The local scratch directory of a job (validated id)."""
        return self.root / check_job_id(job_id)

    def open_output(self, job_id: str, width: int, height: int, fps: float, frames_per_block: int) -> "StoredJobOutput":
        return StoredJobOutput(self.dir(job_id), width, height, fps, frames_per_block, storage=self.storage,
                               keep_frames=self.keep_frames)

    def fetch(self, job_id: str) -> None:
        """Download what the storage holds of a job's stream into the scratch directory, so a
        JobOutput there resumes after the stored blocks (another worker started the job)."""
        d = self.dir(job_id)
        shutil.rmtree(d, ignore_errors=True)
        for name in self.storage.list(f"{job_id}/"):
            if name == self.CHECKPOINT or name in (JobOutput.VIDEO, JobOutput.THUMBNAIL):
                continue
            path = d / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(self.storage.get(f"{job_id}/{name}"))

    def save_checkpoint(self, job_id: str, snapshot: dict) -> None:
        import torch

        check_job_id(job_id)
        buf = io.BytesIO()
        torch.save(snapshot, buf)
        self.storage.put(f"{job_id}/{self.CHECKPOINT}", buf.getvalue())

    def load_checkpoint(self, job_id: str) -> dict | None:
        import torch

        check_job_id(job_id)
        try:
            data = self.storage.get(f"{job_id}/{self.CHECKPOINT}")
        except FileNotFoundError:
            return None
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)

    def drop_checkpoint(self, job_id: str) -> None:
        check_job_id(job_id)
        self.storage.delete(f"{job_id}/{self.CHECKPOINT}")

    def remove(self, job_id: str) -> None:
        """Everything of a job: its stored objects and the local scratch."""
        check_job_id(job_id)
        self.storage.delete_prefix(f"{job_id}/")
        shutil.rmtree(self.dir(job_id), ignore_errors=True)

    def replay_reader(self, job_id: str) -> Optional["StoredOutputReader"]:
        """A reader of the stored blocks, or None until the first is stored."""
        reader = StoredOutputReader(self.storage, check_job_id(job_id))
        return reader if reader.exists() else None

    def local_file(self, job_id: str, name: str) -> Optional[Path]:
        """A local path with the stored file `name` of a job (downloaded once into the scratch
        cache if the storage is remote); None if it is not stored."""
        check_job_id(job_id)
        key = f"{job_id}/{name}"
        path = self.storage.local_path(key)
        if path is not None:
            return path
        cached = self.dir(job_id) / name
        if not cached.is_file():
            try:
                data = self.storage.get(key)
            except FileNotFoundError:
                return None
            cached.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(cached, data)
        return cached


class StoredJobOutput(JobOutput):
    """A JobOutput in the local scratch directory that copies every finished file into the
    shared storage: stream.json and init.mp4 before the block's segment (the segment is the
    commit point of a block, in the storage as on disk), the final MP4 and thumbnail last."""

    def __init__(self, job_dir, width, height, fps, frames_per_block, storage: Storage, keep_frames=False):
        self.storage = storage
        self.job_id = Path(job_dir).name
        super().__init__(job_dir, width, height, fps, frames_per_block, keep_frames=keep_frames)

    def _store(self, path: Path) -> None:
        self.storage.put_file(f"{self.job_id}/{path.relative_to(self.dir)}", path)

    def add_block(self, block) -> bytes:
        index = block.index
        already = index < self.blocks_written
        segment = super().add_block(block)
        if already:
            return segment
        if index == 0 or not self.storage.exists(f"{self.job_id}/{self.INIT}"):
            self._store(self.dir / "stream.json")
            self._store(self.dir / self.INIT)
        if self.keep_frames:
            self._store(self.dir / "frames" / f"{index:06d}.npy")
        self._store(self.info(index).path)
        return segment

    def finalize(self) -> Path:
        path = super().finalize()
        self._store(self.thumbnail_path)
        self._store(self.video_path)  # last: a stored video.mp4 means the job's files are complete
        return path


class StoredOutputReader:
    """JobOutput's read side over a Storage: what a websocket replay needs."""

    def __init__(self, storage: Storage, job_id: str):
        self.storage, self.job_id = storage, job_id
        self._segments: list[SegmentInfo] = []
        self._num_blocks: Optional[int] = None
        self._init: Optional[bytes] = None

    def exists(self) -> bool:
        return self.storage.exists(f"{self.job_id}/stream.json")

    def refresh(self) -> int:
        if self._num_blocks is None:
            try:
                self._num_blocks = json.loads(self.storage.get(f"{self.job_id}/stream.json")).get("num_blocks")
            except FileNotFoundError:
                pass
        found = {}
        for name in self.storage.list(f"{self.job_id}/segments/"):
            match = _SEGMENT_NAME.match(name)
            if match:
                index, start, count = map(int, match.groups())
                found[index] = SegmentInfo(index, start, count, Path("segments") / name)
        segments, frame = [], 0
        while len(segments) in found and found[len(segments)].frame_start == frame:
            info = found[len(segments)]
            segments.append(info)
            frame += info.frame_count
        self._segments = segments
        return len(segments)

    @property
    def blocks_written(self) -> int:
        return len(self._segments)

    def event(self, index: int) -> dict:
        info = self._segments[index]
        return block_event(index, info.frame_start, info.frame_count, self._num_blocks)

    def init_segment(self) -> bytes:
        if self._init is None:
            self._init = self.storage.get(f"{self.job_id}/{JobOutput.INIT}")
        return self._init

    def segment(self, index: int) -> bytes:
        return self.storage.get(f"{self.job_id}/{self._segments[index].path}")
