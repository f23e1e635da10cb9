"""InProcessBlockHub without a server: a real worker-like thread writes blocks with JobOutput and
publishes them while viewers join at different moments."""
import asyncio
import threading
import time

import numpy as np
import pytest

from sana_serve.engine.video import decode_video
from sana_serve.server.embedded.hub import InProcessBlockHub
from sana_serve.server.hub import CLOSE_TOO_SLOW, StreamClosed
from sana_serve.server.outputs import JobOutput, block_event
from tests.server.test_outputs import F, FPS, H, W, make_blocks

SIZES = [8] + [16] * 7


def producer(job_dir, hub, job_id, blocks, delay, started: threading.Event):
    """What the worker does per block: write, then publish; finally finish."""
    out = JobOutput(job_dir, W, H, FPS, F)
    for b in blocks:
        segment = out.add_block(b)
        hub.publish(job_id, dict(block_event(b.index, b.frame_start, b.frame_count, b.num_blocks), id=job_id), segment)
        started.set()
        time.sleep(delay)
    out.close()
    hub.finish(job_id, {"type": "video.completed", "id": job_id})


async def collect(hub, job_id, from_block=0, pause=0.0):
    events, payload = [], bytearray()
    sub = hub.subscribe(job_id, from_block)
    async for event, data in sub:
        if data is None:
            return events, bytes(payload), event
        events.append(event)
        payload += data
        await asyncio.sleep(pause)


def test_viewers_joining_at_any_moment_get_every_block_once(tmp_path):
    frames, blocks = make_blocks(SIZES)
    hub = InProcessBlockHub(lambda job_id: JobOutput.reader(tmp_path / job_id), max_buffered_blocks=16)
    started = threading.Event()

    async def main():
        early = asyncio.ensure_future(collect(hub, "job"))  # subscribed before anything exists
        await asyncio.sleep(0.05)
        thread = threading.Thread(target=producer, args=(tmp_path / "job", hub, "job", blocks, 0.05, started))
        thread.start()
        await asyncio.to_thread(started.wait)
        await asyncio.sleep(0.12)
        middle = asyncio.ensure_future(collect(hub, "job"))  # joins mid-job: replay, then live
        resumed = asyncio.ensure_future(collect(hub, "job", from_block=3))
        results = await asyncio.gather(early, middle, resumed)
        await asyncio.to_thread(thread.join)
        late = await collect(hub, "job", from_block=5)  # after the end: all from disk
        return results + [late]

    results = asyncio.run(main())
    whole = decode_video(results[0][1])
    assert whole.shape == frames.shape
    for (events, payload, end), start in zip(results, [0, 0, 3, 5]):
        assert [e["index"] for e in events] == list(range(start, len(SIZES)))  # no gap, no repeat
        assert end["type"] == "video.completed"
        decoded = decode_video(payload)  # each viewer's payloads are one playable stream
        assert np.array_equal(decoded, whole[sum(SIZES[:start]):])
    assert hub.viewers() == 0


def test_a_stalled_viewer_never_blocks_the_publisher(tmp_path):
    frames, blocks = make_blocks(SIZES)
    hub = InProcessBlockHub(lambda job_id: JobOutput.reader(tmp_path / job_id), max_buffered_blocks=2)

    async def main():
        sub = hub.subscribe("job", 0)
        overflowed = asyncio.ensure_future(sub.overflowed())
        started = threading.Event()
        t0 = time.perf_counter()
        # The viewer never reads: the producer must still run at full speed.
        await asyncio.to_thread(producer, tmp_path / "job", hub, "job", blocks, 0.0, started)
        elapsed = time.perf_counter() - t0
        closed = await asyncio.wait_for(overflowed, 5)
        with pytest.raises(StreamClosed) as info:
            async for _ in sub:
                pass
        await sub.aclose()
        return elapsed, closed, info.value

    elapsed, closed, raised = asyncio.run(main())
    assert closed.code == raised.code == CLOSE_TOO_SLOW
    assert "from_block=0" in closed.reason  # it never got a block
    assert elapsed < 20
    assert hub.viewers() == 0
