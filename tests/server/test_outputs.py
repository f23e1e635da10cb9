"""JobOutput: blocks persisted atomically, recovered after a crash, finalized into MP4 + thumbnail."""
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from sana_serve.engine.rollout import Block
from sana_serve.engine.video import decode_video
from sana_serve.server.outputs import JobOutput

W, H, FPS, F = 64, 64, 16, 16
SIZES = [8, 16, 16, 16, 16, 12]  # a short first block (causal VAE), a short last block


def synthetic_frames(count: int) -> np.ndarray:
    """A square moving 2 px per frame over gray 2x2-pixel noise: real texture for the encoder,
    yet representable in yuv420p (chroma at half resolution), so errors measure the codec."""
    rng = np.random.default_rng(1)
    noise = rng.integers(0, 60, (count, H // 2, W // 2, 1)).astype(np.uint8)
    frames = np.repeat(np.repeat(np.repeat(noise, 2, 1), 2, 2), 3, 3)
    for i in range(count):
        x = (2 * i) % (W - 16)
        frames[i, 24:40, x:x + 16] = (220, 40, 40)
    return frames


def make_blocks(sizes=SIZES):
    frames = synthetic_frames(sum(sizes))
    starts = np.cumsum([0] + sizes[:-1])
    return frames, [Block(k, int(s), frames[s:s + n], len(sizes), 0.0) for k, (s, n) in enumerate(zip(starts, sizes))]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    frames, blocks = make_blocks()
    out = JobOutput(tmp_path_factory.mktemp("whole"), W, H, FPS, F)
    segments = [out.add_block(b) for b in blocks]
    out.close()
    return frames, out.init_segment(), segments


def test_blocks_stream_and_finalize(tmp_path, uninterrupted):
    frames, blocks = make_blocks()
    out = JobOutput(tmp_path, W, H, FPS, F)
    segments = [out.add_block(b) for b in blocks]
    assert out.blocks_written == len(SIZES) and out.frames_written == len(frames)
    assert [out.segment(k) for k in range(len(SIZES))] == segments
    assert out.event(1) == {"type": "video.block", "index": 1, "frame_start": 8, "frame_count": 16,
                            "num_blocks": 6, "progress": 33}
    assert out.event(5)["progress"] == 100
    streamed = decode_video(out.init_segment() + b"".join(segments))
    assert streamed.shape == frames.shape
    assert np.array_equal(streamed, decode_video(uninterrupted[1] + b"".join(uninterrupted[2])))

    video = out.finalize()
    assert video == tmp_path / "video.mp4"
    data = video.read_bytes()
    assert data.index(b"moov") < data.index(b"mdat") and b"moof" not in data  # regular MP4, moov first
    decoded = decode_video(video)
    assert np.array_equal(decoded, streamed)  # the stream remuxed: the very frames viewers saw
    assert np.abs(decoded.astype(int) - frames).mean() < 8
    thumb = decode_video(out.thumbnail_path)  # ffmpeg reads the PNG back
    assert thumb.shape == (1, H, W, 3)
    assert np.array_equal(thumb[0], streamed[len(frames) // 2])  # PNG is lossless
    # no raw frames unless asked for; segments stay for replay; finalize again is a no-op
    assert not (tmp_path / "frames").exists()
    assert JobOutput.open(tmp_path).blocks_written == len(SIZES)
    assert out.finalize() == video
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]


def test_reopen_resumes_the_stream(tmp_path, uninterrupted):
    frames, blocks = make_blocks()
    first = JobOutput(tmp_path, W, H, FPS, F)
    head = [first.add_block(b) for b in blocks[:3]]
    first.close()  # the process goes away

    reopened = JobOutput.open(tmp_path)
    assert reopened.blocks_written == 3 and reopened.frames_written == 40
    assert reopened.num_blocks == len(SIZES)
    tail = [reopened.add_block(b) for b in blocks[3:]]
    _, init, whole = uninterrupted
    assert reopened.init_segment() == init
    assert head == whole[:3]
    decoded = decode_video(init + b"".join(head + tail))
    assert np.array_equal(decoded, decode_video(init + b"".join(whole)))


def test_crash_between_frames_and_segment(tmp_path, uninterrupted):
    frames, blocks = make_blocks()
    out = JobOutput(tmp_path, W, H, FPS, F, keep_frames=True)
    for b in blocks[:3]:
        out.add_block(b)
    out.close()
    # What a crash can leave: block 3's frames without its segment, a half-written temp file.
    np.save(tmp_path / "frames" / "000003.npy", frames[:5])
    (tmp_path / "segments" / ".000003-000040-16.m4s.1234abcd.tmp").write_bytes(b"\x00\x00torn")
    reopened = JobOutput(tmp_path, W, H, FPS, F, keep_frames=True)
    assert reopened.blocks_written == 3
    for b in blocks[3:]:
        reopened.add_block(b)
    assert np.array_equal(reopened.frames(3), blocks[3].frames)
    assert all(np.array_equal(reopened.frames(k), b.frames) for k, b in enumerate(blocks))
    decoded = decode_video(reopened.init_segment() + b"".join(reopened.segment(k) for k in range(6)))
    assert np.array_equal(decoded, decode_video(uninterrupted[1] + b"".join(uninterrupted[2])))
    assert decode_video(reopened.finalize()).shape == frames.shape


def test_repeated_block_is_idempotent_and_gaps_are_refused(tmp_path):
    _, blocks = make_blocks()
    out = JobOutput(tmp_path, W, H, FPS, F)
    s0 = out.add_block(blocks[0])
    assert out.add_block(blocks[0]) == s0 and out.blocks_written == 1
    with pytest.raises(ValueError, match="next block to write is 1"):
        out.add_block(blocks[2])
    with pytest.raises(IndexError):
        out.segment(1)
    out.close()


CHILD = textwrap.dedent("""
    import sys
    sys.path[:0] = [{root!r}, {tests!r}]
    from test_outputs import make_blocks, W, H, FPS, F
    from sana_serve.server.outputs import JobOutput
    _, blocks = make_blocks([8] + [16] * 40)
    out = JobOutput(sys.argv[1], W, H, FPS, F, keep_frames=True)  # new or reopened
    for b in blocks[out.blocks_written:]:
        out.add_block(b)
        print(b.index, flush=True)
""")


@pytest.mark.processes
def test_sigkill_mid_job_then_resume(tmp_path):
    """A real process killed at an arbitrary moment: what is on disk is always a valid prefix."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    script = tmp_path / "child.py"
    script.write_text(CHILD.format(root=root, tests=os.path.dirname(os.path.abspath(__file__))))
    job = tmp_path / "job"
    child = subprocess.Popen([sys.executable, str(script), str(job)], stdout=subprocess.PIPE, text=True)
    for _ in range(5):  # let it write a few blocks, then kill it somewhere inside the next ones
        child.stdout.readline()
    time.sleep(0.05)
    child.send_signal(signal.SIGKILL)
    child.wait()
    child.stdout.close()

    reopened = JobOutput.open(job)
    written = reopened.blocks_written
    assert 5 <= written < 41
    frames, blocks = make_blocks([8] + [16] * 40)
    prefix = decode_video(reopened.init_segment() + b"".join(reopened.segment(k) for k in range(written)))
    assert prefix.shape[0] == reopened.frames_written == 8 + 16 * (written - 1)
    reopened.close()

    # The restarted process completes the job; the stream equals an uninterrupted encoding.
    subprocess.run([sys.executable, str(script), str(job)], check=True, stdout=subprocess.DEVNULL)
    done = JobOutput.open(job)
    assert done.blocks_written == 41
    stream = decode_video(done.init_segment() + b"".join(done.segment(k) for k in range(41)))
    whole = JobOutput(tmp_path / "whole", W, H, FPS, F)
    segments = [whole.add_block(b) for b in blocks]
    whole.close()
    assert np.array_equal(stream, decode_video(whole.init_segment() + b"".join(segments)))
    assert np.array_equal(done.frames(40), frames[-16:])
