"""Tests for engine/video.py: MP4 files, fragmented-MP4 streaming blocks, and decoding."""

import gc
import os
import re
import signal
import struct
import subprocess

import imageio_ffmpeg
import numpy as np
import pytest

from sana_serve.engine.video import FragmentedMp4Encoder, Mp4Writer, VideoEncodingError, decode_video, remux_to_mp4

W, H, FPS = 64, 64, 16
BACKGROUND = (10, 10, 10)
RED = (220, 40, 40)


def moving_square(count: int, start: int = 0) -> np.ndarray:
    """Flat background with a 16 px red square moving right 2 px a frame (even, so the
    half-resolution chroma of yuv420p is aligned and flat colours survive encoding)."""
    frames = np.empty((count, H, W, 3), np.uint8)
    frames[:] = BACKGROUND
    for i in range(count):
        x = (2 * (start + i)) % (W - 16)
        frames[i, 24:40, x : x + 16] = RED
    return frames


def mean_abs_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


# -- a tiny MP4 box parser, independent of the module under test ---------------------------

CONTAINERS = {b"moov", b"trak", b"mdia", b"minf", b"stbl", b"mvex", b"moof", b"traf"}


def boxes(data: bytes, start: int = 0, end: int = None):
    """(type, payload_start, end) of each box in data[start:end]."""
    end = len(data) if end is None else end
    while start < end:
        size, kind = struct.unpack_from(">I4s", data, start)
        assert size >= 8, f"bad box size {size} for {kind!r}"
        yield kind, start + 8, start + size
        start += size


def child(data: bytes, start: int, end: int, kind: bytes):
    for k, payload, box_end in boxes(data, start, end):
        if k == kind:
            return payload, box_end
    raise AssertionError(f"no {kind!r} box")


def find(data: bytes, path):
    start, end = 0, len(data)
    for kind in path:
        start, end = child(data, start, end, kind)
    return start, end


def trex_default_flags(init: bytes) -> int:
    pos, _ = find(init, [b"moov", b"mvex", b"trex"])
    # version/flags, track_ID, default sample description index, duration, size, flags
    return struct.unpack_from(">I", init, pos + 20)[0]


def fragments(media: bytes):
    """(moof payload start, moof end) for each moof in a media segment."""
    return [(p, e) for kind, p, e in boxes(media) if kind == b"moof"]


def first_sample_flags(media: bytes, moof: int, moof_end: int, trex_flags: int) -> int:
    traf, traf_end = child(media, moof, moof_end, b"traf")
    tfhd, _ = child(media, traf, traf_end, b"tfhd")
    tfhd_flags = struct.unpack_from(">I", media, tfhd)[0] & 0xFFFFFF
    flags = trex_flags
    if tfhd_flags & 0x20:  # default-sample-flags-present, after the other optional fields
        offset = tfhd + 8  # version/flags, track_ID
        offset += 8 if tfhd_flags & 0x01 else 0
        offset += 4 if tfhd_flags & 0x02 else 0
        offset += 4 if tfhd_flags & 0x08 else 0
        offset += 4 if tfhd_flags & 0x10 else 0
        flags = struct.unpack_from(">I", media, offset)[0]
    trun, _ = child(media, traf, traf_end, b"trun")
    trun_flags = struct.unpack_from(">I", media, trun)[0] & 0xFFFFFF
    offset = trun + 8  # version/flags, sample_count
    offset += 4 if trun_flags & 0x001 else 0  # data_offset
    if trun_flags & 0x004:  # first_sample_flags
        return struct.unpack_from(">I", media, offset)[0]
    if trun_flags & 0x400:  # per-sample flags
        offset += 4 if trun_flags & 0x100 else 0
        offset += 4 if trun_flags & 0x200 else 0
        return struct.unpack_from(">I", media, offset)[0]
    return flags


def is_sync(sample_flags: int) -> bool:
    return not sample_flags & 0x10000  # sample_is_non_sync_sample


def decode_time(media: bytes, moof: int, moof_end: int) -> int:
    traf, traf_end = child(media, moof, moof_end, b"traf")
    tfdt, _ = child(media, traf, traf_end, b"tfdt")
    return struct.unpack_from(">Q" if media[tfdt] == 1 else ">I", media, tfdt + 4)[0]


def ffmpeg_stream_info(path) -> str:
    result = subprocess.run(
        [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-nostdin", "-i", str(path)],
        capture_output=True,
    )
    return result.stderr.decode()


# -- Mp4Writer -----------------------------------------------------------------------------


def test_mp4_writer_round_trip(tmp_path):
    frames = moving_square(40)
    path = tmp_path / "video.mp4"
    with Mp4Writer(path, W, H, FPS) as writer:
        for block in np.split(frames, [7, 23]):  # uneven writes
            writer.write(block)
    assert writer.frames_written == 40

    decoded = decode_video(path)
    assert decoded.shape == (40, H, W, 3) and decoded.dtype == np.uint8
    assert mean_abs_error(decoded, frames) < 3
    assert np.array_equal(decode_video(path.read_bytes()), decoded)
    assert [p.name for p in tmp_path.iterdir()] == ["video.mp4"]  # no temp file left


def test_mp4_writer_is_h264_yuv420p_with_moov_first(tmp_path):
    path = tmp_path / "video.mp4"
    with Mp4Writer(path, W, H, FPS) as writer:
        writer.write(moving_square(16))
    data = path.read_bytes()
    order = [kind for kind, _, _ in boxes(data)]
    assert order[0] == b"ftyp"
    assert order.index(b"moov") < order.index(b"mdat"), order  # faststart

    stsd, _ = find(data, [b"moov", b"trak", b"mdia", b"minf", b"stbl", b"stsd"])
    assert data[stsd + 12 : stsd + 16] == b"avc1"  # first sample entry's type
    info = ffmpeg_stream_info(path)
    assert re.search(r"Video: h264 .*yuv420p", info), info
    assert "64x64" in info and "16 fps" in info


def test_mp4_writer_exception_leaves_no_file(tmp_path):
    path = tmp_path / "video.mp4"
    with pytest.raises(RuntimeError, match="boom"):
        with Mp4Writer(path, W, H, FPS) as writer:
            writer.write(moving_square(8))
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_mp4_writer_ffmpeg_failure_raises_and_leaves_no_file(tmp_path):
    path = tmp_path / "video.mp4"
    writer = Mp4Writer(path, W, H, FPS)
    writer.write(moving_square(4))
    writer._proc.kill()  # simulate ffmpeg crashing mid-video
    writer._proc.wait()
    with pytest.raises(VideoEncodingError):
        writer.write(moving_square(4))
        writer.close()
    assert list(tmp_path.iterdir()) == []


def test_mp4_writer_without_frames_raises_and_leaves_no_file(tmp_path):
    with pytest.raises(VideoEncodingError, match="no frames"):
        with Mp4Writer(tmp_path / "video.mp4", W, H, FPS):
            pass
    assert list(tmp_path.iterdir()) == []


def test_mp4_writer_dropped_without_close_cleans_up(tmp_path):
    writer = Mp4Writer(tmp_path / "video.mp4", W, H, FPS)
    writer.write(moving_square(4))
    proc = writer._proc
    del writer
    gc.collect()
    assert proc.poll() is not None
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "width, height, match", [(63, 64, "width must be even"), (64, 31, "height must be even"), (0, 64, "positive")]
)
def test_mp4_writer_rejects_bad_geometry(tmp_path, width, height, match):
    with pytest.raises(ValueError, match=match):
        Mp4Writer(tmp_path / "video.mp4", width, height, FPS)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "frames, match",
    [
        (np.zeros((2, H, W, 3), np.float32), "dtype float32"),
        (np.zeros((H, W, 3), np.uint8), r"shape \(64, 64, 3\)"),
        (np.zeros((2, H, W + 2, 3), np.uint8), "shape"),
        (np.zeros((2, H, W, 4), np.uint8), "shape"),
        ([[0]], "numpy array"),
    ],
)
def test_bad_frames_raise_value_error(tmp_path, frames, match):
    with Mp4Writer(tmp_path / "video.mp4", W, H, FPS) as writer:
        with pytest.raises(ValueError, match=match):
            writer.write(frames)
        writer.write(moving_square(2))  # the writer is still usable
    with FragmentedMp4Encoder(W, H, FPS, frames_per_block=4) as encoder:
        with pytest.raises(ValueError, match=match):
            encoder.encode_block(frames)


# -- FragmentedMp4Encoder ------------------------------------------------------------------

BLOCK_SIZES = [8, 16, 16, 16]  # the first block shorter, as a causal video VAE produces


@pytest.fixture(scope="module")
def streamed():
    frames = moving_square(sum(BLOCK_SIZES))
    blocks = []
    with FragmentedMp4Encoder(W, H, FPS, frames_per_block=16) as encoder:
        for block in np.split(frames, np.cumsum(BLOCK_SIZES)[:-1]):
            blocks.append(encoder.encode_block(block))
        init = encoder.init_segment
    return frames, init, blocks


def test_each_block_returns_exactly_its_frames(streamed):
    frames, init, blocks = streamed
    assert [kind for kind, _, _ in boxes(init)][:2] == [b"ftyp", b"moov"]
    for size, media in zip(BLOCK_SIZES, blocks):
        kinds = [kind for kind, _, _ in boxes(media)]
        # one moof+mdat per frame, all of them: no frame is held back for the next block
        assert kinds == [b"moof", b"mdat"] * size


def test_stream_decodes_to_all_frames(streamed):
    frames, init, blocks = streamed
    decoded = decode_video(init + b"".join(blocks))
    assert decoded.shape == (56, H, W, 3)
    assert mean_abs_error(decoded, frames) < 3


def test_client_can_join_at_any_block(streamed):
    frames, init, blocks = streamed
    starts = np.cumsum([0] + BLOCK_SIZES)
    for k in range(1, len(blocks)):
        decoded = decode_video(init + b"".join(blocks[k:]))
        assert decoded.shape == (56 - starts[k], H, W, 3)
        assert mean_abs_error(decoded, frames[starts[k] :]) < 3


def test_every_block_starts_with_the_only_keyframe(streamed):
    frames, init, blocks = streamed
    trex_flags = trex_default_flags(init)
    for media in blocks:
        sync = [is_sync(first_sample_flags(media, p, e, trex_flags)) for p, e in fragments(media)]
        assert sync[0], "block does not start with a sync sample"
        assert not any(sync[1:]), "unexpected keyframe inside a block"


def test_timeline_has_no_gaps(streamed):
    # The encoder drops a flush frame after every block and closes the gap it leaves.
    frames, init, blocks = streamed
    media = b"".join(blocks)
    times = [decode_time(media, p, e) for p, e in fragments(media)]
    steps = np.diff(times)
    assert times[0] == 0 and len(set(steps.tolist())) == 1 and steps[0] > 0
    mfhds = [child(media, p, e, b"mfhd")[0] for p, e in fragments(media)]
    sequence = [struct.unpack_from(">I", media, mfhd + 4)[0] for mfhd in mfhds]  # after version/flags
    assert sequence == list(range(1, 57))


def test_block_size_rules():
    with FragmentedMp4Encoder(W, H, FPS, frames_per_block=4) as encoder:
        with pytest.raises(RuntimeError, match="first encode_block"):
            encoder.init_segment
        with pytest.raises(ValueError, match="at most"):
            encoder.encode_block(moving_square(5))
        with pytest.raises(ValueError, match="at least one"):
            encoder.encode_block(moving_square(0))
        encoder.encode_block(moving_square(3))
        encoder.encode_block(moving_square(4))
        encoder.encode_block(moving_square(2))  # a short block is the last one
        with pytest.raises(ValueError, match="last"):
            encoder.encode_block(moving_square(4))
    with pytest.raises(ValueError, match="closed"):
        encoder.encode_block(moving_square(4))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(width=65, height=64, fps=16, frames_per_block=4), "even"),
        (dict(width=64, height=64, fps=0, frames_per_block=4), "fps"),
        (dict(width=64, height=64, fps=16, frames_per_block=0), "frames_per_block"),
    ],
)
def test_encoder_rejects_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FragmentedMp4Encoder(**kwargs)


def test_encoder_reports_ffmpeg_death():
    encoder = FragmentedMp4Encoder(W, H, FPS, frames_per_block=4)
    encoder.encode_block(moving_square(4))
    encoder._proc.kill()
    encoder._proc.wait()
    with pytest.raises(VideoEncodingError):
        encoder.encode_block(moving_square(4))
    encoder.close()


def test_encoder_times_out_on_a_stuck_ffmpeg():
    encoder = FragmentedMp4Encoder(W, H, FPS, frames_per_block=16, timeout=1.0)
    encoder.encode_block(moving_square(16))
    os.kill(encoder._proc.pid, signal.SIGSTOP)  # ffmpeg hangs: reads and writes nothing
    with pytest.raises(VideoEncodingError, match="within 1 s"):
        # 16 frames are more than a pipe buffer holds, so this blocks in the write
        encoder.encode_block(moving_square(16, start=16))
    assert encoder._proc.poll() is not None  # killed, not left stopped
    with pytest.raises(ValueError, match="closed"):
        encoder.encode_block(moving_square(4))


def test_dropped_encoder_terminates_ffmpeg():
    encoder = FragmentedMp4Encoder(W, H, FPS, frames_per_block=4)
    encoder.encode_block(moving_square(4))
    proc = encoder._proc
    del encoder
    gc.collect()
    assert proc.poll() is not None


# -- resuming a stream with a fresh encoder -------------------------------------------------

RESUME_SIZES = [8, 16, 16, 16, 16, 12]  # short first block, short last block


def textured_square(count: int) -> np.ndarray:
    """moving_square plus seeded noise: real texture, so rate control has work to do."""
    rng = np.random.default_rng(0)
    noisy = moving_square(count).astype(np.int16) + rng.integers(-20, 21, (count, H, W, 3))
    return np.clip(noisy, 0, 255).astype(np.uint8)


def sequence_numbers(media: bytes):
    return [struct.unpack_from(">I", media, child(media, p, e, b"mfhd")[0] + 4)[0] for p, e in fragments(media)]


def test_resumed_encoder_continues_the_timeline():
    # An encoder stops after block 2 (a server restart); a fresh one started at the frame
    # offset encodes blocks 3..5. The first init segment plus all six blocks must be the same
    # video as one uninterrupted encoder's output.
    frames = textured_square(sum(RESUME_SIZES))
    blocks = np.split(frames, np.cumsum(RESUME_SIZES)[:-1])
    with FragmentedMp4Encoder(W, H, FPS, frames_per_block=16) as encoder:
        whole = [encoder.encode_block(b) for b in blocks]
        whole_init = encoder.init_segment
    with FragmentedMp4Encoder(W, H, FPS, frames_per_block=16) as first:
        head = [first.encode_block(b) for b in blocks[:3]]
        init = first.init_segment
    offset = sum(RESUME_SIZES[:3])
    with FragmentedMp4Encoder(W, H, FPS, frames_per_block=16, start_frame=offset) as resumed:
        tail = [resumed.encode_block(b) for b in blocks[3:]]
        assert resumed.init_segment == init  # the new encoder appends to the earlier init
        assert resumed.frames_encoded == sum(RESUME_SIZES[3:])
    assert init == whole_init
    assert head == whole[:3]

    stream = init + b"".join(head + tail)
    decoded = decode_video(stream)
    assert decoded.shape == (len(frames), H, W, 3)
    # Constant quantizer, every block a closed GOP: the resumed stream has the same pixels.
    assert np.array_equal(decoded, decode_video(whole_init + b"".join(whole)))
    assert mean_abs_error(decoded, frames) < 8  # noisy texture costs a little more

    media = b"".join(head + tail)
    times = [decode_time(media, p, e) for p, e in fragments(media)]
    assert times == [decode_time(b"".join(whole), p, e) for p, e in fragments(b"".join(whole))]
    assert len(set(np.diff(times).tolist())) == 1 and times[0] == 0
    assert sequence_numbers(media) == list(range(1, len(frames) + 1))
    # A client can still join at the resumed block.
    assert np.array_equal(decode_video(init + b"".join(tail)), decoded[offset:])


def test_resumed_encoder_short_block_is_the_last():
    with FragmentedMp4Encoder(W, H, FPS, frames_per_block=4, start_frame=7) as encoder:
        media = encoder.encode_block(moving_square(3, start=7))
        with pytest.raises(ValueError, match="last"):
            encoder.encode_block(moving_square(4, start=10))
    assert sequence_numbers(media) == [8, 9, 10]


def test_start_sequence_is_independent_of_start_frame():
    with FragmentedMp4Encoder(W, H, FPS, frames_per_block=4, start_frame=8, start_sequence=100) as encoder:
        media = encoder.encode_block(moving_square(4)) + encoder.encode_block(moving_square(4))
    assert sequence_numbers(media) == list(range(101, 109))
    times = [decode_time(media, p, e) for p, e in fragments(media)]
    step = times[1] - times[0]
    assert times == [step * (8 + i) for i in range(8)]


@pytest.mark.parametrize("kwargs, match", [(dict(start_frame=-1), "start_frame"), (dict(start_sequence=-2), "start_sequence")])
def test_encoder_rejects_bad_offsets(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FragmentedMp4Encoder(W, H, FPS, frames_per_block=4, **kwargs)


# -- remux_to_mp4 ----------------------------------------------------------------------------


def test_remux_is_the_stream_as_a_regular_mp4(tmp_path, streamed):
    frames, init, blocks = streamed
    path = remux_to_mp4([init, *blocks], tmp_path / "video.mp4")
    data = path.read_bytes()
    order = [kind for kind, _, _ in boxes(data)]
    assert order[0] == b"ftyp" and order.index(b"moov") < order.index(b"mdat") and b"moof" not in order
    assert np.array_equal(decode_video(path), decode_video(init + b"".join(blocks)))  # no re-encoding
    assert "16 fps" in ffmpeg_stream_info(path)
    assert [p.name for p in tmp_path.iterdir()] == ["video.mp4"]


def test_remux_of_garbage_raises_and_leaves_no_file(tmp_path):
    with pytest.raises(VideoEncodingError, match="remux"):
        remux_to_mp4([b"\x00\x00\x00\x08free", b"not an mp4 at all"], tmp_path / "video.mp4")
    assert list(tmp_path.iterdir()) == []
