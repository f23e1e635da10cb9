"""RedisBlockHub against a real redis-server: stored blocks replayed then live ones, in order and
once each, from any block; a viewer that stops reading is cut off (1013) with the block to
resume from, as with the in-process hub."""
import asyncio

import numpy as np

from sana_serve.engine.rollout import Block
from sana_serve.engine.video import decode_video
from sana_serve.server.cluster.hub import RedisBlockHub
from sana_serve.server.hub import CLOSE_TOO_SLOW
from sana_serve.server.outputs import block_event
from sana_serve.server.cluster.storage import DirStorage, StorageFiles, StoredJobOutput
from sana_serve.server.jobs import new_job_id


def make_blocks(n):
    rng = np.random.default_rng(1)
    return [Block(i, i * 32, rng.integers(0, 255, (32, 64, 64, 3), np.uint8), n, 0.1) for i in range(n)]


def test_replay_then_live_without_gaps_or_repeats(redis_server, tmp_path):
    files = StorageFiles(DirStorage(tmp_path / "shared"), tmp_path / "scratch")
    hub = RedisBlockHub(redis_server.url, files)
    job_id = new_job_id()
    out = StoredJobOutput(files.dir(job_id), 64, 64, 16, 32, storage=files.storage)
    blocks = make_blocks(5)

    def write(b):  # what the worker's writer does: store, then publish
        segment = out.add_block(b)
        hub.publish(job_id, dict(block_event(b.index, b.frame_start, 32, 5), id=job_id), segment)

    async def main():
        for b in blocks[:2]:
            write(b)
        subs = [hub.subscribe(job_id, 0), hub.subscribe(job_id, 1), hub.subscribe(job_id, 4)]
        for b in blocks[2:]:
            await asyncio.sleep(0.05)
            write(b)
        hub.finish(job_id, {"type": "video.completed", "id": job_id})
        got = []
        for sub in subs:
            items = [item async for item in sub]
            got.append(items)
        late = [item async for item in hub.subscribe(job_id, 0)]  # after the end: all from storage
        return got, late

    (full, from1, from4), late = asyncio.run(asyncio.wait_for(main(), 60))
    for items, start in ((full, 0), (from1, 1), (from4, 4), (late, 0)):
        assert [e.get("index") for e, _ in items[:-1]] == list(range(start, 5))
        assert items[-1] == ({"type": "video.completed", "id": job_id}, None)
        video = decode_video(b"".join(p for _, p in items[:-1]))  # each starts with the init segment
        assert video.shape == ((5 - start) * 32, 64, 64, 3)
    assert hub.viewers() == 0


def test_a_viewer_that_stops_reading_is_cut_off(redis_server, tmp_path):
    files = StorageFiles(DirStorage(tmp_path / "shared"), tmp_path / "scratch")
    hub = RedisBlockHub(redis_server.url, files, max_buffered_blocks=3)
    job_id = new_job_id()

    async def main():
        sub = hub.subscribe(job_id, 0)
        for i in range(6):  # nobody reads: the buffer overflows
            hub.publish(job_id, dict(block_event(i, i * 32, 32, 6), id=job_id), b"x" * 100)
        closed = await asyncio.wait_for(sub.overflowed(), 10)
        await sub.aclose()
        return closed

    closed = asyncio.run(main())
    assert closed.code == CLOSE_TOO_SLOW and "from_block=0" in closed.reason
    assert hub.viewers() == 0
