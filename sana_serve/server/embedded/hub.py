"""The embedded BlockHub: fan-out of finished blocks inside one process (API and worker together).

The worker's writer thread publishes each block after its segment is on disk; a viewer
registers before looking at the disk, so every block reaches it one way or the other, and
server.hub.Subscription drops what arrives both ways (by index).
"""
from __future__ import annotations

import asyncio
import collections
import threading
from typing import Callable, Optional

from sana_serve.server.hub import END, Replay, Subscription, ViewerBuffer
from sana_serve.server.interfaces import OutputReader


class InProcessBlockHub:
    """Fan-out inside one process. `replay_reader(job_id)` reads a job's stored blocks
    (JobFiles.replay_reader)."""

    def __init__(self, replay_reader: Callable[[str], Optional[OutputReader]], max_buffered_blocks: int = 8,
                 max_buffered_bytes: int = 32 << 20, remember_finished: int = 4096):
        self._replay_reader = replay_reader
        self.max_buffered_blocks = max_buffered_blocks
        self.max_buffered_bytes = max_buffered_bytes
        self._lock = threading.Lock()
        self._subscribers: dict[str, set[ViewerBuffer]] = {}
        # End events of recently finished jobs, for a viewer that subscribes just after the end.
        self._finished: "collections.OrderedDict[str, dict]" = collections.OrderedDict()
        self._remember_finished = remember_finished

    # -- worker side -------------------------------------------------------------------------
    def publish(self, job_id: str, event: dict, segment: bytes) -> None:
        with self._lock:
            buffers = list(self._subscribers.get(job_id, ()))
        for buf in buffers:
            buf.offer((event, segment), size=len(segment))

    def finish(self, job_id: str, event: dict) -> None:
        with self._lock:
            self._finished[job_id] = event
            self._finished.move_to_end(job_id)
            while len(self._finished) > self._remember_finished:
                self._finished.popitem(last=False)
            buffers = list(self._subscribers.get(job_id, ()))
        for buf in buffers:
            buf.offer((END, event), always=True)  # the end is never what overflows a buffer

    def viewers(self, job_id: Optional[str] = None) -> int:
        with self._lock:
            if job_id is not None:
                return len(self._subscribers.get(job_id, ()))
            return sum(len(s) for s in self._subscribers.values())

    # -- viewer side -------------------------------------------------------------------------
    def subscribe(self, job_id: str, from_block: int = 0) -> "Subscription":
        """Call from the event loop that will iterate the subscription."""
        if from_block < 0:
            raise ValueError(f"from_block must be >= 0, got {from_block}")
        buf = ViewerBuffer(asyncio.get_running_loop(), self.max_buffered_blocks, self.max_buffered_bytes)
        # Register before looking at the disk: a block written after the directory listing
        # is published after it, so it reaches this buffer (the worker writes, then
        # publishes). Blocks that arrive both ways are deduplicated by index.
        with self._lock:
            self._subscribers.setdefault(job_id, set()).add(buf)
            ended = self._finished.get(job_id)

        def unregister() -> None:
            with self._lock:
                subscribers = self._subscribers.get(job_id)
                if subscribers is not None:
                    subscribers.discard(buf)
                    if not subscribers:
                        del self._subscribers[job_id]

        replay = Replay(lambda: self._replay_reader(job_id), job_id, from_block)
        return Subscription(buf, replay, ended, unregister, self.max_buffered_blocks)
