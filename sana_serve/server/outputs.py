"""A job's outputs on disk: per-block frames and fMP4 segments, then the final MP4 and thumbnail.

Layout of one job directory:

    stream.json                      geometry: width, height, fps, frames_per_block, num_blocks
    init.mp4                         the fMP4 init segment (ftyp+moov), written with block 0
    segments/000003-000072-32.m4s    block 3's fMP4 media segment: index, frame_start, frame_count
    frames/000003.npy                block 3's raw uint8 frames (T, H, W, 3), only with keep_frames
    video.mp4                        the finished MP4 (moov first): the segments remuxed, by finalize()
    thumbnail.png                    a middle frame, from finalize()

Every file is written to a temporary name and renamed into place, and a block counts as
written only once its segment exists: raw frames (if kept) first, segment last. A crash in
between leaves an orphan .npy that the next add_block() of that index overwrites, never a
torn file.
The segment's name carries the block's position on the timeline, so a reader (a websocket
replaying a finished job, another process) learns everything from one directory listing,
and a writer reopened after a restart resumes the fragmented-MP4 timeline where it stopped.

One writer per job directory (the worker thread); any number of readers.
"""
from __future__ import annotations

import io
import itertools
import json
import os
import re
import struct
import uuid
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from sana_serve.engine.video import FragmentedMp4Encoder, VideoEncodingError, decode_video, remux_to_mp4

__all__ = ["JobOutput", "SegmentInfo", "block_event", "write_png"]

_SEGMENT_NAME = re.compile(r"^(\d{6,})-(\d{6,})-(\d+)\.m4s$")


def block_event(index: int, frame_start: int, frame_count: int, num_blocks: Optional[int]) -> dict:
    """The websocket event announcing a block (the README's Server section); live and replayed alike."""
    progress = None if not num_blocks else min(100, (index + 1) * 100 // num_blocks)
    return {"type": "video.block", "index": index, "frame_start": frame_start,
            "frame_count": frame_count, "num_blocks": num_blocks, "progress": progress}


@dataclass(frozen=True)
class SegmentInfo:
    index: int
    frame_start: int
    frame_count: int
    path: Path


def write_atomic(path: Path, data: bytes) -> None:
    """Write to a unique temporary name in the same directory, fsync, then rename over `path`."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_png(path: Path, image: np.ndarray) -> None:
    """A minimal RGB PNG writer (zlib + struct): a thumbnail needs no imaging library."""
    height, width, _ = image.shape
    raw = b"".join(b"\x00" + image[y].tobytes() for y in range(height))  # filter 0 per row

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB, no interlace
    data = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")
    write_atomic(Path(path), data)


class JobOutput:
    """Persists a job's blocks as they are generated and builds the final files.

        out = JobOutput(job_dir, width=64, height=64, fps=16, frames_per_block=32)
        segment = out.add_block(block)     # worker thread: save, then publish the segment
        ...
        out.finalize()                     # video.mp4 + thumbnail.png

    `JobOutput.open(job_dir)` opens an existing directory with the geometry it was written
    with (for readers and for resuming after a restart).
    """

    VIDEO = "video.mp4"
    THUMBNAIL = "thumbnail.png"
    INIT = "init.mp4"

    def __init__(self, job_dir, width: int, height: int, fps: float, frames_per_block: int,
                 keep_frames: bool = False, create: bool = True):
        self.dir = Path(job_dir)
        self.width, self.height, self.fps = int(width), int(height), fps
        self.frames_per_block = int(frames_per_block)
        self.keep_frames = keep_frames  # also store each block's raw frames (.npy), e.g. for exact tests
        self._encoder: Optional[FragmentedMp4Encoder] = None
        self._segments: list[SegmentInfo] = []
        if create:  # a reader must not re-create the directory of a job deleted meanwhile
            self.dir.mkdir(parents=True, exist_ok=True)
        self._recover()

    @classmethod
    def open(cls, job_dir) -> "JobOutput":
        """Open a directory written earlier; FileNotFoundError if no block was ever written."""
        meta = json.loads((Path(job_dir) / "stream.json").read_text())
        return cls(job_dir, meta["width"], meta["height"], meta["fps"], meta["frames_per_block"], create=False)

    @staticmethod
    def exists(job_dir) -> bool:
        return (Path(job_dir) / "stream.json").exists()

    @classmethod
    def reader(cls, job_dir) -> Optional["JobOutput"]:
        """The directory's blocks for reading, None while none is written (or it is gone)."""
        if not cls.exists(job_dir):
            return None
        try:
            return cls.open(job_dir)
        except FileNotFoundError:  # deleted between the two looks
            return None

    # -- reading -----------------------------------------------------------------------------
    @property
    def blocks_written(self) -> int:
        return len(self._segments)

    @property
    def frames_written(self) -> int:
        last = self._segments[-1] if self._segments else None
        return last.frame_start + last.frame_count if last else 0

    @property
    def num_blocks(self) -> Optional[int]:
        try:
            return json.loads((self.dir / "stream.json").read_text()).get("num_blocks")
        except FileNotFoundError:
            return None

    def refresh(self) -> int:
        """Re-read the directory (a reader following a live writer); returns blocks_written."""
        self._recover()
        return self.blocks_written

    def info(self, index: int) -> SegmentInfo:
        if not 0 <= index < len(self._segments):
            raise IndexError(f"block {index} has not been written (blocks written: {len(self._segments)})")
        return self._segments[index]

    def event(self, index: int) -> dict:
        info = self.info(index)
        return block_event(index, info.frame_start, info.frame_count, self.num_blocks)

    def init_segment(self) -> bytes:
        return (self.dir / self.INIT).read_bytes()

    def segment(self, index: int) -> bytes:
        return self.info(index).path.read_bytes()

    def frames(self, index: int) -> np.ndarray:
        """Block `index`'s raw frames (stored with keep_frames only)."""
        return np.load(self.dir / "frames" / f"{index:06d}.npy")

    @property
    def video_path(self) -> Path:
        return self.dir / self.VIDEO

    @property
    def thumbnail_path(self) -> Path:
        return self.dir / self.THUMBNAIL

    @property
    def finalized(self) -> bool:
        return self.video_path.exists() and self.thumbnail_path.exists()

    # -- writing -----------------------------------------------------------------------------
    def add_block(self, block) -> bytes:
        """Persist block (an engine Block) and return its fMP4 media segment.

        Blocks come in order. A block that was already written (the engine redid it after a
        restart whose checkpoint predates the segment) returns the stored segment unchanged:
        the rollout is deterministic, so it is the same block.
        """
        index = block.index
        if index < len(self._segments):
            return self.segment(index)
        if index != len(self._segments):
            raise ValueError(f"block {index} arrived, but the next block to write is {len(self._segments)}")
        frames = np.ascontiguousarray(block.frames)
        frame_start = self.frames_written
        if block.frame_start != frame_start:
            raise ValueError(f"block {index} starts at frame {block.frame_start}, expected {frame_start}")
        if index == 0:
            write_atomic(self.dir / "stream.json", json.dumps({
                "width": self.width, "height": self.height, "fps": self.fps,
                "frames_per_block": self.frames_per_block, "num_blocks": block.num_blocks,
            }).encode())
        (self.dir / "segments").mkdir(parents=True, exist_ok=True)
        if self.keep_frames:
            (self.dir / "frames").mkdir(exist_ok=True)
            buf = io.BytesIO()
            np.save(buf, frames)
            write_atomic(self.dir / "frames" / f"{index:06d}.npy", buf.getvalue())

        if self._encoder is None:
            # A fresh process (or a resumed job): continue the timeline after what is on disk.
            self._encoder = FragmentedMp4Encoder(self.width, self.height, self.fps, self.frames_per_block,
                                                 start_frame=frame_start)
        segment = self._encoder.encode_block(frames)
        init = self._encoder.init_segment
        init_path = self.dir / self.INIT
        if index == 0 or not init_path.exists():
            write_atomic(init_path, init)
        elif self._encoder.blocks_encoded == 1 and init_path.read_bytes() != init:
            # Same settings and the same ffmpeg give byte-identical init segments; a different
            # one (ffmpeg upgraded between restarts?) would not fit the stored segments.
            raise VideoEncodingError("the resumed encoder's init segment differs from the stored one")
        path = self.dir / "segments" / f"{index:06d}-{frame_start:06d}-{len(frames)}.m4s"
        write_atomic(path, segment)  # the commit point of this block
        self._segments.append(SegmentInfo(index, frame_start, len(frames), path))
        return segment

    def finalize(self) -> Path:
        """Write video.mp4 (H.264, moov first) and thumbnail.png (the middle frame).

        The MP4 is the stored stream remuxed without re-encoding: fast even for long videos
        (the worker is not held up), and frame for frame what the live viewers saw. Idempotent:
        after a crash half-way it can simply be called again. The segments are kept, so
        websocket viewers can replay a finished video.
        """
        self.close_encoder()
        if not self._segments:
            raise ValueError("finalize() before any block was written")
        if not self.thumbnail_path.exists():
            middle = self.frames_written // 2
            info = next(s for s in self._segments if s.frame_start + s.frame_count > middle)
            frames = decode_video(self.init_segment() + self.segment(info.index))
            write_png(self.thumbnail_path, frames[middle - info.frame_start])
        if not self.video_path.exists():
            remux_to_mp4(itertools.chain([self.init_segment()], (self.segment(s.index) for s in self._segments)),
                         self.video_path)
        return self.video_path

    def close_encoder(self) -> None:
        if self._encoder is not None:
            self._encoder.close()
            self._encoder = None

    def close(self) -> None:
        self.close_encoder()

    # -- recovery ----------------------------------------------------------------------------
    def _recover(self) -> None:
        """Rebuild the block list from the segment names: consecutive blocks from 0 only."""
        found = {}
        seg_dir = self.dir / "segments"
        if seg_dir.is_dir():
            for entry in os.scandir(seg_dir):
                match = _SEGMENT_NAME.match(entry.name)
                if match:
                    index, start, count = map(int, match.groups())
                    found[index] = SegmentInfo(index, start, count, Path(entry.path))
        segments, frame = [], 0
        while len(segments) in found:
            info = found[len(segments)]
            if info.frame_start != frame:
                break  # cannot happen with a single writer; never trust a gap
            segments.append(info)
            frame += info.frame_count
        self._segments = segments

