"""Video encoding: finished MP4 files, streamable fragmented-MP4 blocks, and a decoder for tests.

Everything goes through the ffmpeg binary that imageio-ffmpeg ships, driven over pipes, so
there is no codec library to build and frames never need to sit in memory all at once.

- `Mp4Writer` writes a regular H.264 MP4 file (moov first, so it plays while downloading).
- `FragmentedMp4Encoder` turns blocks of frames into fragmented-MP4 media segments that a
  browser's MediaSource can append as they arrive; any block is a valid place to start playing.
- `remux_to_mp4` turns a fragmented-MP4 stream into a regular MP4 file without re-encoding.
- `decode_video` turns MP4 bytes or a file back into frames.
"""

from __future__ import annotations

import collections
import os
import re
import struct
import subprocess
import threading
import uuid
import weakref
from pathlib import Path
from typing import Deque, Iterable, List, Optional, Union

import imageio_ffmpeg
import numpy as np

__all__ = ["VideoEncodingError", "Mp4Writer", "FragmentedMp4Encoder", "decode_video", "remux_to_mp4"]


class VideoEncodingError(RuntimeError):
    """ffmpeg failed; the message ends with the tail of its stderr."""


def _ffmpeg() -> str:
    return imageio_ffmpeg.get_ffmpeg_exe()


def _check_geometry(width: int, height: int, fps: float) -> None:
    for name, value in (("width", width), ("height", height)):
        if not isinstance(value, (int, np.integer)) or value <= 0:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
        # yuv420p stores chroma at half resolution in both directions; libx264 refuses odd sizes.
        if value % 2:
            raise ValueError(f"{name} must be even for H.264 yuv420p, got {value}")
    if not isinstance(fps, (int, float, np.integer, np.floating)) or not fps > 0:
        raise ValueError(f"fps must be a positive number, got {fps!r}")


def _check_frames(frames: np.ndarray, width: int, height: int) -> np.ndarray:
    expected = f"uint8 frames of shape (T, {height}, {width}, 3)"
    if not isinstance(frames, np.ndarray):
        raise ValueError(f"expected a numpy array of {expected}, got {type(frames).__name__}")
    if frames.dtype != np.uint8:
        raise ValueError(f"expected {expected}, got dtype {frames.dtype}")
    if frames.ndim != 4 or frames.shape[1:] != (height, width, 3):
        raise ValueError(f"expected {expected}, got shape {tuple(frames.shape)}")
    # ffmpeg reads packed rgb24 rows; a strided view (e.g. a crop) must be packed first.
    return np.ascontiguousarray(frames)


def _input_args(width: int, height: int, fps: float) -> List[str]:
    """Raw RGB frames on stdin, the same for both encoders."""
    return [
        "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}",
        "-framerate", str(fps), "-i", "pipe:0", "-an",
    ]


class _StderrTail:
    """Drains a child's stderr in a thread, keeping only the last lines.

    An undrained stderr pipe fills after ~64 KiB and then ffmpeg blocks forever on its next
    log line; keeping just the tail also bounds memory for hour-long streams. The thread holds
    the pipe, never the owning encoder, so dropping the encoder still lets it be collected.
    """

    def __init__(self, pipe, max_lines: int = 40):
        self._lines: Deque[str] = collections.deque(maxlen=max_lines)
        self._thread = threading.Thread(target=self._drain, args=(pipe,), daemon=True)
        self._thread.start()

    def _drain(self, pipe) -> None:
        for line in iter(pipe.readline, b""):
            self._lines.append(line.decode("utf-8", "replace").rstrip())
        pipe.close()

    def text(self, join_timeout: float = 1.0) -> str:
        # After the child exits, give the thread a moment to read the last lines.
        self._thread.join(join_timeout)
        return "\n".join(self._lines)


def _failure(message: str, stderr: _StderrTail) -> VideoEncodingError:
    tail = stderr.text().strip()
    return VideoEncodingError(f"{message}; ffmpeg stderr:\n{tail}" if tail else message)


def _kill(proc: subprocess.Popen) -> None:
    """Stop a child that is no longer wanted (also used as a GC finalizer: no `self` here)."""
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    # stdout and stderr belong to the reader threads, which close them at EOF.
    if proc.stdin is not None:
        try:
            proc.stdin.close()
        except OSError:  # BrokenPipe while flushing what the dead child never read
            pass


def _discard_file(proc: subprocess.Popen, path: str) -> None:
    _kill(proc)
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


class Mp4Writer:
    """Incremental H.264 MP4 file writer.

    Frames are streamed into ffmpeg as they are written, so a long video never sits in memory.
    ffmpeg writes to a hidden temporary file next to `path` that is renamed over `path` only
    after ffmpeg succeeded: readers never see a half-written file, and a failed run leaves none.

        with Mp4Writer("out.mp4", 64, 64, fps=16) as writer:
            for block in blocks:
                writer.write(block)          # uint8 (T, H, W, 3)
    """

    def __init__(self, path: Union[str, os.PathLike], width: int, height: int, fps: float):
        _check_geometry(width, height, fps)
        self.path = Path(path)
        self.width, self.height, self.fps = int(width), int(height), fps
        self.frames_written = 0
        # Same directory, so the final rename is atomic (never a copy across file systems).
        # A unique name rather than mkstemp: ffmpeg creates the file, so it gets the usual
        # permissions instead of mkstemp's owner-only 0600.
        self._tmp_path = str(self.path.parent / f".{self.path.name}.{uuid.uuid4().hex[:12]}.partial")
        args = [
            _ffmpeg(), "-hide_banner", "-loglevel", "error", "-y",
            *_input_args(width, height, fps),
            "-c:v", "libx264", "-preset", "veryfast", "-crf", "18", "-pix_fmt", "yuv420p",
            # moov before mdat: browsers can start playing (and seek) before the download ends.
            "-movflags", "+faststart",
            "-f", "mp4", self._tmp_path,
        ]
        self._proc = subprocess.Popen(
            args, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        self._stderr = _StderrTail(self._proc.stderr)
        self._closed = False
        # If the writer is dropped without close(), kill ffmpeg and delete the partial file.
        self._finalizer = weakref.finalize(self, _discard_file, self._proc, self._tmp_path)

    def write(self, frames: np.ndarray) -> None:
        """Append uint8 frames of shape (T, height, width, 3)."""
        if self._closed:
            raise ValueError("write() on a closed Mp4Writer")
        frames = _check_frames(frames, self.width, self.height)
        try:
            self._proc.stdin.write(frames.data)
            self._proc.stdin.flush()
        except (BrokenPipeError, ValueError, OSError):
            self.abort()
            raise _failure("ffmpeg exited while receiving frames", self._stderr) from None
        self.frames_written += len(frames)

    def close(self) -> None:
        """Finish the file and move it to `path`; raises VideoEncodingError if ffmpeg failed."""
        if self._closed:
            return
        self._closed = True
        if self.frames_written == 0:
            self.abort()
            raise VideoEncodingError(f"no frames were written to {self.path}")
        try:
            self._proc.stdin.close()  # EOF: ffmpeg flushes the encoder and writes the moov
        except BrokenPipeError:
            pass
        returncode = self._proc.wait()
        if returncode != 0:
            error = _failure(f"ffmpeg exited with code {returncode}", self._stderr)
            self.abort()
            raise error
        self._finalizer.detach()
        os.replace(self._tmp_path, self.path)

    def abort(self) -> None:
        """Stop ffmpeg and delete the partial file; `path` is left untouched."""
        self._closed = True
        self._finalizer()  # runs _discard_file once; later calls are no-ops

    def __enter__(self) -> "Mp4Writer":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


class _FragmentReader:
    """Splits ffmpeg's fragmented-MP4 stdout into the init segment and moof+mdat fragments.

    Runs in a thread so stdout never fills up and blocks ffmpeg. Top-level MP4 boxes are a
    4-byte big-endian size and a 4-character type; everything before the first `moof` (ftyp
    and moov) is the init segment, and each `moof` with the `mdat` after it is one fragment
    (one frame, because of frag_every_frame). Anything else (the trailing `mfra`) is ignored.
    """

    def __init__(self, pipe):
        self._cond = threading.Condition()
        self._init = bytearray()
        self._init_done = False
        self._fragments: Deque[bytes] = collections.deque()
        self._eof = False
        self._thread = threading.Thread(target=self._read, args=(pipe,), daemon=True)
        self._thread.start()

    def _read(self, pipe) -> None:
        buf = bytearray()
        moof: Optional[bytes] = None
        while True:
            chunk = pipe.read1(1 << 16)
            if not chunk:
                break
            buf += chunk
            while len(buf) >= 8:
                size, kind = struct.unpack(">I4s", buf[:8])
                if size == 1:  # 64-bit size follows the type
                    if len(buf) < 16:
                        break
                    size = struct.unpack(">Q", buf[8:16])[0]
                if size < 8 or len(buf) < size:  # incomplete (or size 0: "until EOF")
                    break
                box = bytes(buf[:size])
                del buf[:size]
                with self._cond:
                    if kind == b"moof":
                        self._init_done = True
                        moof = box
                    elif kind == b"mdat" and moof is not None:
                        self._fragments.append(moof + box)
                        moof = None
                        self._cond.notify_all()
                    elif not self._init_done:
                        self._init += box
        pipe.close()
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    @property
    def init_segment(self) -> Optional[bytes]:
        with self._cond:
            return bytes(self._init) if self._init_done else None

    def take(self, count: int) -> Optional[List[bytes]]:
        """The next `count` fragments, or None if ffmpeg's output ended first."""
        with self._cond:
            self._cond.wait_for(lambda: len(self._fragments) >= count or self._eof)
            if len(self._fragments) < count:
                return None
            return [self._fragments.popleft() for _ in range(count)]


def _child_boxes(data: bytearray, start: int, end: int):
    """(type, payload_start, box_end) of the boxes between data[start:end]."""
    pos = start
    while pos + 8 <= end:
        size, kind = struct.unpack_from(">I4s", data, pos)
        header = 8
        if size == 1:
            size, header = struct.unpack_from(">Q", data, pos + 8)[0], 16
        if size < header:
            raise VideoEncodingError(f"malformed MP4 box {kind!r} at offset {pos}")
        yield kind, pos + header, pos + size
        pos += size


class FragmentedMp4Encoder:
    """Encodes blocks of frames into fragmented-MP4 segments for browser MediaSource playback.

    `encode_block(frames)` returns the moof+mdat fragments of exactly those frames as soon as
    ffmpeg has produced them; `init_segment` (ftyp+moov) is prepended once per client. Every
    block starts with an IDR (key) frame, so `init_segment + blocks[k] + blocks[k+1] + ...` is
    a valid stream for any k: a client can join, or resume, at any block boundary.

    Block sizes: the first block may have 1..frames_per_block frames (a causal video VAE
    decodes its first latent frame to fewer pixel frames); every later block must have exactly
    frames_per_block, except a shorter last block, after which the stream is finished. The
    reason: x264 must be told which frames are keyframes before they arrive, and ffmpeg's
    `-force_key_frames expr:` is fixed at start, so the process is started on the first block,
    when its length is known, and the rest of the pattern is fixed.

    `timeout` bounds each encode_block call: if ffmpeg has not delivered the block by then it
    is killed and VideoEncodingError is raised. One caller at a time (not thread-safe).

    Resuming: a job that stopped after block k-1 (say the server restarted) continues with a
    fresh encoder, `FragmentedMp4Encoder(..., start_frame=N)` where N is the number of frames
    already encoded. Its fragments continue the earlier timeline (decode times from N frames on,
    sequence numbers from `start_sequence`, by default N since there is one fragment per
    frame), and its init segment is byte-identical to the first encoder's, so the earlier
    `init + blocks[:k]` followed by the new blocks is one valid stream. The quantizer is
    constant (`-qp`) rather than CRF because CRF's rate control carries complexity history from
    frame to frame: with a constant quantizer each block (a closed GOP starting with an IDR
    frame) is a function of its own frames only, so a resumed stream decodes to exactly the
    pixels of an uninterrupted one.

    Two ffmpeg behaviours shape the implementation:
    - With `frag_every_frame` the mp4 muxer writes a frame's fragment only when the *next*
      frame arrives (it needs the next timestamp to know the frame's duration), so the last
      frame of a block would be held back until the next block. After each block we therefore
      send one extra "flush" frame (a copy of the last frame). Its fragment, which arrives at
      the start of the next block, is dropped: the next block starts with an IDR frame, so
      nothing references it. The flush frames' time slots are removed by rewriting each
      fragment's decode time (tfdt) and sequence number (mfhd), so the timeline has no gaps.
    - Without `frag_every_frame` the output lags a whole block behind.
    """

    def __init__(
        self,
        width: int,
        height: int,
        fps: float,
        frames_per_block: int,
        timeout: float = 60.0,
        start_frame: int = 0,
        start_sequence: Optional[int] = None,
    ):
        _check_geometry(width, height, fps)
        if not isinstance(frames_per_block, (int, np.integer)) or frames_per_block < 1:
            raise ValueError(f"frames_per_block must be a positive integer, got {frames_per_block!r}")
        if not isinstance(start_frame, (int, np.integer)) or start_frame < 0:
            raise ValueError(f"start_frame must be a non-negative integer, got {start_frame!r}")
        if start_sequence is None:
            start_sequence = start_frame
        if not isinstance(start_sequence, (int, np.integer)) or start_sequence < 0:
            raise ValueError(f"start_sequence must be a non-negative integer, got {start_sequence!r}")
        # Where this encoder's output sits on the stream's timeline (non-zero when resuming).
        self.start_frame = int(start_frame)
        self.start_sequence = int(start_sequence)
        self.frames_encoded = 0
        self._ticks_per_frame: Optional[int] = None  # from the init segment's mdhd timescale
        self.width, self.height, self.fps = int(width), int(height), fps
        self.frames_per_block = int(frames_per_block)
        self.timeout = timeout
        self.blocks_encoded = 0
        self._proc: Optional[subprocess.Popen] = None
        self._reader: Optional[_FragmentReader] = None
        self._stderr: Optional[_StderrTail] = None
        self._finalizer: Optional[weakref.finalize] = None
        self._finished = False  # a short block was encoded: it must have been the last
        self._closed = False
        # Timeline bookkeeping for the dropped flush frames (see class docstring).
        self._flush_pending = False
        self._dropped_ticks = 0
        self._dropped_fragments = 0

    # -- public API ------------------------------------------------------------------------

    @property
    def init_segment(self) -> bytes:
        """ftyp+moov; available once the first block has been encoded."""
        init = self._reader.init_segment if self._reader is not None else None
        if not init:
            raise RuntimeError("the init segment is available after the first encode_block()")
        return init

    def encode_block(self, frames: np.ndarray) -> bytes:
        """Encode uint8 frames (T, height, width, 3); returns their moof+mdat bytes."""
        if self._closed:
            raise ValueError("encode_block() on a closed FragmentedMp4Encoder")
        frames = _check_frames(frames, self.width, self.height)
        count = len(frames)
        self._check_block_size(count)
        if self._proc is None:
            self._start(first_block=count)

        # One deadline covers writing (a stuck ffmpeg stops reading its stdin, and the write
        # blocks) and waiting for output: when it passes, ffmpeg is killed, which ends both.
        proc, timed_out = self._proc, threading.Event()

        def on_timeout() -> None:
            timed_out.set()
            proc.kill()

        watchdog = threading.Timer(self.timeout, on_timeout)
        watchdog.daemon = True
        watchdog.start()
        try:
            fragments = self._send(frames)
        finally:
            watchdog.cancel()
        if fragments is None:
            self.close()
            if timed_out.is_set():
                message = f"ffmpeg did not finish block {self.blocks_encoded} within {self.timeout:g} s"
            else:
                message = f"ffmpeg exited with code {proc.returncode} during block {self.blocks_encoded}"
            raise _failure(message, self._stderr)

        if self._flush_pending:
            dropped, fragments = fragments[0], fragments[1:]
            # The dropped fragment lasted until the next one starts.
            self._dropped_ticks += self._decode_time(fragments[0]) - self._decode_time(dropped)
            self._dropped_fragments += 1
        self._flush_pending = True
        self.blocks_encoded += 1
        self.frames_encoded += count
        # Only the stream's very first block may be short without being the last.
        if count < self.frames_per_block and (self.blocks_encoded > 1 or self.start_frame > 0):
            self._finished = True
        return b"".join(self._retime(fragment) for fragment in fragments)

    def close(self) -> None:
        """End ffmpeg (waits up to 10 s, then kills it). Idempotent.

        An encoder dropped without close() has its ffmpeg killed by a finalizer instead.
        """
        self._closed = True
        if self._proc is None:
            return
        try:
            self._proc.stdin.close()
        except OSError:
            pass
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        self._finalizer()  # kills ffmpeg if it is still running; later calls are no-ops

    def __enter__(self) -> "FragmentedMp4Encoder":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close()

    # -- internals -------------------------------------------------------------------------

    def _send(self, frames: np.ndarray) -> Optional[List[bytes]]:
        """Write a block plus its flush frame; the fragments that came out, None if ffmpeg died."""
        try:
            self._proc.stdin.write(frames.data)
            self._proc.stdin.write(frames[-1].data)  # the flush frame (see class docstring)
            self._proc.stdin.flush()
        except OSError:  # BrokenPipeError: ffmpeg is gone
            return None
        # The previous block's flush frame is pushed out by this block's first frame.
        expected = len(frames) + (1 if self._flush_pending else 0)
        return self._reader.take(expected)

    def _check_block_size(self, count: int) -> None:
        F = self.frames_per_block
        if count == 0:
            raise ValueError("a block needs at least one frame")
        if self._finished:
            raise ValueError(
                "the previous block was shorter than frames_per_block, so it had to be the last"
            )
        if count > F:
            raise ValueError(f"a block has at most frames_per_block={F} frames, got {count}")

    def _start(self, first_block: int) -> None:
        F = self.frames_per_block
        # Frame numbers as the encoder sees them, flush frames included: block 0 is frames
        # 0..first_block-1, then one flush frame, then every block is F frames + 1 flush frame.
        # So block k >= 1 starts at first_block + 1 + (k - 1) * (F + 1).
        first = first_block + 1
        keyframes = f"expr:eq(n,0)+gte(n,{first})*eq(mod(n-{first},{F + 1}),0)"
        args = [
            _ffmpeg(), "-hide_banner", "-loglevel", "error",
            *_input_args(self.width, self.height, self.fps),
            # A constant quantizer, not CRF: no rate-control history across blocks, so a
            # resumed encoder reproduces an uninterrupted one's pixels (class docstring).
            "-c:v", "libx264", "-preset", "veryfast", "-qp", "18", "-pix_fmt", "yuv420p",
            # zerolatency: no lookahead and no B-frames, so each frame leaves x264 at once.
            "-tune", "zerolatency",
            "-force_key_frames", keyframes,
            # -g equal to the keyframe period: x264's own GOP cadence then agrees with the
            # forced one; no scene-cut keyframes in the middle of a block.
            "-g", str(F + 1), "-sc_threshold", "0",
            # empty_moov: init segment up front; default_base_moof: offsets relative to each
            # moof (what MSE expects); frag_every_frame: a fragment per frame, so output
            # keeps pace with input.
            "-movflags", "empty_moov+default_base_moof+frag_every_frame",
            "-flush_packets", "1",
            "-f", "mp4", "pipe:1",
        ]
        self._proc = subprocess.Popen(
            args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        self._reader = _FragmentReader(self._proc.stdout)
        self._stderr = _StderrTail(self._proc.stderr)
        # Terminate ffmpeg if the encoder is dropped without close().
        self._finalizer = weakref.finalize(self, _kill, self._proc)

    @staticmethod
    def _find(fragment: bytearray, path: List[bytes]) -> int:
        """Offset of the payload of the box at `path` (e.g. moof/traf/tfdt) in `fragment`."""
        start, end = 0, len(fragment)
        for kind in path:
            for child, payload, box_end in _child_boxes(fragment, start, end):
                if child == kind:
                    start, end = payload, box_end
                    break
            else:
                raise VideoEncodingError(f"ffmpeg fragment has no {'/'.join(k.decode() for k in path)}")
        return start

    def _decode_time(self, fragment: bytes) -> int:
        data = bytearray(fragment)
        pos = self._find(data, [b"moof", b"traf", b"tfdt"])
        version = data[pos]
        return struct.unpack_from(">Q" if version == 1 else ">I", data, pos + 4)[0]

    def _timescale_ticks_per_frame(self) -> int:
        """Media timescale ticks per frame, read from the init segment's mdhd."""
        if self._ticks_per_frame is None:
            init = bytearray(self.init_segment)
            pos = self._find(init, [b"moov", b"trak", b"mdia", b"mdhd"])
            # full box: version, flags, then creation and modification times (4 or 8 bytes each)
            timescale_at = pos + (20 if init[pos] == 1 else 12)
            timescale = struct.unpack_from(">I", init, timescale_at)[0]
            ticks = timescale / self.fps
            if abs(ticks - round(ticks)) > 1e-6 * ticks:
                raise VideoEncodingError(
                    f"timescale {timescale} is not a whole number of ticks per frame at {self.fps} fps"
                )
            self._ticks_per_frame = int(round(ticks))
        return self._ticks_per_frame

    def _retime(self, fragment: bytes) -> bytes:
        """Place a fragment on the stream's timeline: shift tfdt and renumber mfhd.

        Two corrections: the gaps left by dropped flush frames, and (when resuming) the
        frames and fragments that earlier encoders produced.
        """
        tick_shift = -self._dropped_ticks
        sequence_shift = self.start_sequence - self._dropped_fragments
        if self.start_frame:
            tick_shift += self.start_frame * self._timescale_ticks_per_frame()
        if not tick_shift and not sequence_shift:
            return fragment
        data = bytearray(fragment)
        pos = self._find(data, [b"moof", b"traf", b"tfdt"])
        version = data[pos]  # full box: version byte, 3 flag bytes
        decode_time = struct.unpack_from(">Q" if version == 1 else ">I", data, pos + 4)[0] + tick_shift
        if version == 0 and decode_time >= 1 << 32:
            raise VideoEncodingError("decode time overflows a version-0 tfdt; stream too long")
        struct.pack_into(">Q" if version == 1 else ">I", data, pos + 4, decode_time)
        pos = self._find(data, [b"moof", b"mfhd"])
        sequence = struct.unpack_from(">I", data, pos + 4)[0]
        struct.pack_into(">I", data, pos + 4, sequence + sequence_shift)
        return bytes(data)


def remux_to_mp4(chunks: Iterable[bytes], path: Union[str, os.PathLike]) -> Path:
    """Write a fragmented-MP4 stream (init segment, then media segments) as a regular MP4 file
    with the moov first, by stream copy: no re-encoding, so it takes milliseconds per minute of
    video and its frames are exactly the stream's. Atomic like Mp4Writer (temporary file, then
    rename); raises VideoEncodingError if ffmpeg fails."""
    path = Path(path)
    tmp = str(path.parent / f".{path.name}.{uuid.uuid4().hex[:12]}.partial")
    args = [
        _ffmpeg(), "-hide_banner", "-loglevel", "error", "-y", "-f", "mp4", "-i", "pipe:0",
        "-map", "0:v:0", "-c", "copy", "-movflags", "+faststart", "-f", "mp4", tmp,
    ]
    proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    stderr = _StderrTail(proc.stderr)
    try:
        try:
            for chunk in chunks:
                proc.stdin.write(chunk)
            proc.stdin.close()
        except BrokenPipeError:
            pass
        returncode = proc.wait()
        if returncode != 0:
            raise _failure(f"ffmpeg could not remux the stream (exit code {returncode})", stderr)
        os.replace(tmp, path)
    finally:
        _discard_file(proc, tmp)  # kills ffmpeg if still running; the temp file is gone after the rename
    return path


def decode_video(data_or_path: Union[bytes, bytearray, memoryview, str, os.PathLike]) -> np.ndarray:
    """Decode MP4 bytes or a video file into uint8 frames (T, H, W, 3), RGB.

    Every coded frame is returned once (`-fps_mode passthrough`): no frames are duplicated or
    dropped to fill timestamp gaps, which matters for streams that start mid-timeline.
    """
    from_memory = isinstance(data_or_path, (bytes, bytearray, memoryview))
    source = "pipe:0" if from_memory else os.fspath(data_or_path)
    args = [
        _ffmpeg(), "-hide_banner", "-nostats",
        # Reading a file: keep ffmpeg off our terminal's stdin (it listens for keys there).
        *([] if from_memory else ["-nostdin"]),
        "-i", source, "-map", "0:v:0", "-fps_mode", "passthrough",
        "-f", "rawvideo", "-pix_fmt", "rgb24", "pipe:1",
    ]
    result = subprocess.run(
        args,
        input=bytes(data_or_path) if from_memory else None,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    log = result.stderr.decode("utf-8", "replace")
    if result.returncode != 0:
        raise VideoEncodingError(f"ffmpeg could not decode the video:\n{log[-2000:]}")
    # The frame size comes from ffmpeg's description of the output stream (as imageio-ffmpeg
    # does it); the input side could differ in principle, the rawvideo output cannot.
    output = log[log.find("Output #0"):]
    match = re.search(r"Video: rawvideo.*?, (\d+)x(\d+)", output)
    if match is None:
        raise VideoEncodingError(f"could not find the frame size in ffmpeg's log:\n{log[-2000:]}")
    width, height = int(match.group(1)), int(match.group(2))
    frame_bytes = width * height * 3
    if len(result.stdout) % frame_bytes:
        raise VideoEncodingError(
            f"ffmpeg returned {len(result.stdout)} bytes, not a whole number of {width}x{height} frames"
        )
    return np.frombuffer(result.stdout, np.uint8).reshape(-1, height, width, 3)
