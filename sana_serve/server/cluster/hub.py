"""Live blocks across nodes: one Redis Stream per job.

The worker appends each block (after its segment is in the storage) to the job's stream
`<prefix>:blocks:<id>`, and every API node's viewers read that stream from the entry that was
last when they subscribed, after replaying the stored segments; blocks that arrive both ways
are deduplicated by index (server.hub.Subscription), as in the embedded hub.
"""
from __future__ import annotations

import asyncio
import json
import logging
import threading
from typing import Optional

from sana_serve.server.cluster.storage import StorageFiles
from sana_serve.server.cluster.store import key, redis_client
from sana_serve.server.hub import END, Replay, Subscription, ViewerBuffer

log = logging.getLogger("sana_serve.cluster")


class RedisBlockHub:
    """BlockHub over one Redis Stream per job. publish/finish: any thread (sync client, one
    XADD); subscribe: on an API node's event loop (asyncio client, blocking XREAD)."""

    def __init__(self, url: str, files: StorageFiles, prefix: str = "sana", max_buffered_blocks: int = 8,
                 max_buffered_bytes: int = 32 << 20, keep_seconds: int = 3600, max_entries: int = 512):
        self.url, self.files, self.prefix = url, files, prefix
        self.max_buffered_blocks, self.max_buffered_bytes = max_buffered_blocks, max_buffered_bytes
        self.keep_seconds, self.max_entries = keep_seconds, max_entries
        self._redis = redis_client(url)
        self._async: dict[int, object] = {}  # one asyncio client per event loop
        self._open = 0
        self._lock = threading.Lock()

    def _stream(self, job_id: str) -> str:
        return key(self.prefix, "blocks", job_id)

    def _append(self, job_id: str, fields: dict) -> None:
        pipe = self._redis.pipeline(transaction=False)
        pipe.xadd(self._stream(job_id), fields, maxlen=self.max_entries, approximate=True)
        pipe.expire(self._stream(job_id), self.keep_seconds)
        pipe.execute()

    def publish(self, job_id: str, event: dict, segment: bytes) -> None:
        self._append(job_id, {"event": json.dumps(event), "segment": segment})

    def finish(self, job_id: str, event: dict) -> None:
        self._append(job_id, {"end": json.dumps(event)})

    def viewers(self, job_id: Optional[str] = None) -> int:
        return self._open

    def _async_client(self):
        loop = asyncio.get_running_loop()
        client = self._async.get(id(loop))
        if client is None:
            client = self._async[id(loop)] = redis_client(self.url, asyncio_client=True)
        return client

    def subscribe(self, job_id: str, from_block: int = 0) -> Subscription:
        if from_block < 0:
            raise ValueError(f"from_block must be >= 0, got {from_block}")
        loop = asyncio.get_running_loop()
        buf = ViewerBuffer(loop, self.max_buffered_blocks, self.max_buffered_bytes)
        # The stream's last entry before looking at the storage: every block after it is
        # read live, every block up to it is stored already (stored, then published).
        last = self._redis.xrevrange(self._stream(job_id), "+", "-", count=1)
        last_id = last[0][0] if last else b"0-0"
        ended = json.loads(last[0][1][b"end"]) if last and b"end" in last[0][1] else None
        feed = None if ended is not None else loop.create_task(self._feed(job_id, last_id, buf))
        with self._lock:
            self._open += 1
        closed = []

        def unregister() -> None:
            if closed:
                return
            closed.append(True)
            if feed is not None:
                feed.cancel()
            with self._lock:
                self._open -= 1

        replay = Replay(lambda: self.files.replay_reader(job_id), job_id, from_block)
        return Subscription(buf, replay, ended, unregister, self.max_buffered_blocks)

    async def _feed(self, job_id: str, last_id, buf: ViewerBuffer) -> None:
        """Move the job's stream entries after `last_id` into the viewer's bounded buffer."""
        from redis.exceptions import RedisError

        client, stream = self._async_client(), self._stream(job_id)
        while True:
            try:
                got = await client.xread({stream: last_id}, block=5000, count=16)
            except RedisError as e:
                log.warning("live stream read failed (%s); retrying", e, extra={"job_id": job_id})
                await asyncio.sleep(0.5)
                continue
            for _, entries in got or ():
                for entry_id, fields in entries:
                    last_id = entry_id
                    if b"end" in fields:
                        buf.offer((END, json.loads(fields[b"end"])), always=True)
                        return
                    buf.offer((json.loads(fields[b"event"]), fields[b"segment"]), size=len(fields[b"segment"]))
