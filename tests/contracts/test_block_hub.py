"""The block hub, one contract for both backends (in-process fan-out; a Redis Stream per job read by
every API node, on a shared directory and on S3): a worker-like thread writes each block with the
backend's block writer and publishes it, viewers subscribe at any moment on the viewer side (an API
node's hub in the cluster) and get every block from their `from_block` once, in order, replayed from
the stored files and then live, then the end event; a viewer that stops reading is cut off with the
block to resume from, and never holds up the publisher."""
import asyncio
import threading
import time

import numpy as np
import pytest

from sana_serve.engine.rollout import Block
from sana_serve.engine.video import decode_video
from sana_serve.server.outputs import block_event
from tests.contracts.backends import CLOSE_TOO_SLOW, FRAMES_PER_BLOCK, HEIGHT, WIDTH, StreamClosed, new_job_id

N = 6


def sizes(n=N):
    """Frames per block: the remainder first (as the engine cuts a video), then whole blocks."""
    return [FRAMES_PER_BLOCK // 2] + [FRAMES_PER_BLOCK] * (n - 1)


def starts(n=N):
    return [sum(sizes(n)[:i]) for i in range(n)]


def make_blocks(n=N):
    rng = np.random.default_rng(0)
    return [Block(i, start, rng.integers(0, 255, (size, HEIGHT, WIDTH, 3), np.uint8), n, 0.1)
            for i, (start, size) in enumerate(zip(starts(n), sizes(n)))]


def produce(side, job_id, blocks, delay=0.0, started: threading.Event | None = None, end="video.completed"):
    """What the worker does per block: store it, then publish it; finally the end event."""
    out = side.output(job_id)
    for b in blocks:
        segment = out.add_block(b)
        side.publisher.publish(job_id, dict(block_event(b.index, b.frame_start, b.frame_count, b.num_blocks),
                                            id=job_id), segment)
        if started is not None:
            started.set()
        time.sleep(delay)
    out.close()
    side.publisher.finish(job_id, {"type": end, "id": job_id})


async def collect(hub, job_id, from_block=0):
    """(block events, concatenated payloads, end event) of one viewer."""
    events, payload = [], bytearray()
    async for event, data in hub.subscribe(job_id, from_block):
        if data is None:
            return events, bytes(payload), event
        events.append(event)
        payload += data
    raise AssertionError("the subscription ended without an end event")


def test_viewers_joining_at_any_moment_get_every_block_once(make_hub):
    side = make_hub(max_buffered_blocks=16)
    job_id, blocks = new_job_id(), make_blocks()
    started = threading.Event()

    async def main():
        early = asyncio.ensure_future(collect(side.viewer, job_id))  # subscribed before anything exists
        await asyncio.sleep(0.05)
        thread = threading.Thread(target=produce, args=(side, job_id, blocks, 0.1, started))
        thread.start()
        await asyncio.to_thread(started.wait)
        await asyncio.sleep(0.15)
        middle = asyncio.ensure_future(collect(side.viewer, job_id))  # mid-job: replay, then live
        resumed = asyncio.ensure_future(collect(side.viewer, job_id, from_block=3))  # a reconnect
        results = await asyncio.wait_for(asyncio.gather(early, middle, resumed), 120)
        await asyncio.to_thread(thread.join)
        late = await asyncio.wait_for(collect(side.viewer, job_id, from_block=4), 60)  # after the end: stored
        beyond = await asyncio.wait_for(collect(side.viewer, job_id, from_block=N), 60)
        return results + [late], beyond

    results, beyond = asyncio.run(main())
    whole = decode_video(results[0][1])
    assert whole.shape == (sum(sizes()), HEIGHT, WIDTH, 3)
    for (events, payload, end), start in zip(results, [0, 0, 3, 4]):
        assert [e["index"] for e in events] == list(range(start, N))  # no gap, no repeat
        assert all(e["id"] == job_id and e["num_blocks"] == N and e["type"] == "video.block" for e in events)
        assert [(e["frame_start"], e["frame_count"]) for e in events] == list(zip(starts(), sizes()))[start:]
        assert end == {"type": "video.completed", "id": job_id}
        assert payload[4:8] == b"ftyp"  # the init segment first, whatever block the viewer joined at
        assert np.array_equal(decode_video(payload), whole[starts()[start]:])  # one playable stream
    assert beyond == ([], b"", {"type": "video.completed", "id": job_id})
    assert side.viewer.viewers() == 0


def test_a_failed_job_ends_its_streams_with_the_failure(make_hub):
    side = make_hub()
    job_id, blocks = new_job_id(), make_blocks(N)[:2]  # the job fails after two of its six blocks

    async def main():
        live = asyncio.ensure_future(collect(side.viewer, job_id))
        await asyncio.sleep(0.05)
        await asyncio.to_thread(produce, side, job_id, blocks, 0.05, None, "video.failed")
        got = await asyncio.wait_for(live, 60)
        late = await asyncio.wait_for(collect(side.viewer, job_id, from_block=1), 60)
        return got, late

    (events, payload, end), (late_events, late_payload, late_end) = asyncio.run(main())
    assert [e["index"] for e in events] == [0, 1] and [e["index"] for e in late_events] == [1]
    assert end == late_end == {"type": "video.failed", "id": job_id}
    assert decode_video(payload).shape[0] == sum(sizes()[:2])
    assert decode_video(late_payload).shape[0] == sizes()[1]
    assert side.viewer.viewers() == 0


def test_a_negative_from_block_is_refused(make_hub):
    side = make_hub()

    async def main():
        with pytest.raises(ValueError):
            side.viewer.subscribe(new_job_id(), -1)

    asyncio.run(main())
    assert side.viewer.viewers() == 0


def test_a_stalled_viewer_is_cut_off_and_never_blocks_the_publisher(make_hub):
    side = make_hub(max_buffered_blocks=2)
    job_id, blocks = new_job_id(), make_blocks(8)

    async def main():
        sub = side.viewer.subscribe(job_id, 0)
        overflowed = asyncio.ensure_future(sub.overflowed())
        t0 = time.perf_counter()
        # The viewer never reads: the producer must still run at full speed.
        await asyncio.to_thread(produce, side, job_id, blocks)
        elapsed = time.perf_counter() - t0
        closed = await asyncio.wait_for(overflowed, 20)
        with pytest.raises(StreamClosed) as info:
            async for _ in sub:
                pass
        await sub.aclose()
        # Reconnecting from the block it names gets the whole job.
        events, payload, end = await asyncio.wait_for(collect(side.viewer, job_id, from_block=0), 60)
        return elapsed, closed, info.value, events, end

    elapsed, closed, raised, events, end = asyncio.run(main())
    assert closed.code == raised.code == CLOSE_TOO_SLOW
    assert "from_block=0" in closed.reason  # it never got a block
    assert elapsed < 60
    assert [e["index"] for e in events] == list(range(8)) and end["type"] == "video.completed"
    assert side.viewer.viewers() == 0
