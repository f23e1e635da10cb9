"""Fan-out of finished blocks to live viewers, behind a small interface.

The worker thread calls `publish(job_id, event, segment)` after a block's segment is on disk
and `finish(job_id, event)` when the job ends; websocket handlers iterate
`subscribe(job_id, from_block)`, which yields `(event, payload)` pairs: every block from
`from_block` on, replayed from disk (`JobOutput`) and then live, without gaps or repeats,
and finally the end event with payload None. The first payload of a subscription carries
the init segment in front of the block's media segment, so a client's concatenated payloads
are one playable fragmented MP4 whatever block it joined at.

Rules that keep the worker fast and memory bounded:
- `publish` never blocks: it appends to each viewer's bounded buffer under a short lock and
  wakes the viewer's event loop with `call_soon_threadsafe`.
- A viewer that falls more than `max_buffered_blocks` (or `max_buffered_bytes`) behind is cut
  off: its iterator raises `StreamClosed` with a websocket close code and a reason that says
  which block to resume from. The job goes on regardless.

`InProcessBlockHub` is the embedded implementation (one process, API and worker together);
a Redis pub/sub hub can implement the same three methods for many API nodes.
"""
from __future__ import annotations

import abc
import asyncio
import collections
import threading
from pathlib import Path
from typing import Callable, Deque, Optional

from sana_serve.server.outputs import JobOutput

__all__ = ["BlockHub", "InProcessBlockHub", "Subscription", "StreamClosed", "CLOSE_TOO_SLOW"]

# 1013 "Try Again Later": the server is fine, this client fell behind; it may reconnect with
# from_block. (1008 "policy violation" would suggest the client did something forbidden.)
CLOSE_TOO_SLOW = 1013


class StreamClosed(Exception):
    """The subscription was ended by the server; `code` and `reason` go into the websocket close."""

    def __init__(self, code: int, reason: str):
        super().__init__(f"{code}: {reason}")
        self.code, self.reason = code, reason


class BlockHub(abc.ABC):
    @abc.abstractmethod
    def publish(self, job_id: str, event: dict, segment: bytes) -> None:
        """A block of `job_id` is on disk: hand it to live viewers. Any thread; never blocks."""

    @abc.abstractmethod
    def finish(self, job_id: str, event: dict) -> None:
        """The job ended (`video.completed` / `video.failed`): viewers get `event`, then the end."""

    @abc.abstractmethod
    def subscribe(self, job_id: str, from_block: int = 0) -> "Subscription":
        """Blocks from `from_block` on (replayed, then live), then the end event (payload None).

        Iterating raises StreamClosed when the viewer falls too far behind; `overflowed()`
        announces it even while the viewer is stuck sending."""

    def viewers(self, job_id: Optional[str] = None) -> int:
        """Open subscriptions (for one job, or all)."""
        return 0


_END = object()


class _Buffer:
    """A bounded queue from the worker thread to one subscriber's event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, max_items: int, max_bytes: int):
        self._loop = loop
        self._lock = threading.Lock()
        self._items: Deque = collections.deque()
        self._bytes = 0
        self._max_items, self._max_bytes = max_items, max_bytes
        self.overflowed = False
        self._ready = asyncio.Event()
        self.overflow_event = asyncio.Event()  # set (on the loop) once the buffer overflowed

    def offer(self, item, size: int = 0, always: bool = False) -> None:
        """Queue `item` (any thread). Past the bounds the buffer is dropped and marked overflowed."""
        with self._lock:
            if self.overflowed:
                return
            if not always and (len(self._items) >= self._max_items or self._bytes + size > self._max_bytes):
                self.overflowed = True
                self._items.clear()
                self._bytes = 0
            else:
                self._items.append((item, size))
                self._bytes += size
            overflowed = self.overflowed
        try:
            self._loop.call_soon_threadsafe(self._ready.set)
            if overflowed:
                self._loop.call_soon_threadsafe(self.overflow_event.set)
        except RuntimeError:  # the subscriber's loop is closed: nobody to wake
            pass

    async def get(self):
        """The next item; raises OverflowError once the buffer overflowed."""
        while True:
            with self._lock:
                if self.overflowed:
                    raise OverflowError
                if self._items:
                    item, size = self._items.popleft()
                    self._bytes -= size
                    return item
                self._ready.clear()  # under the lock: a later offer's wake-up cannot be lost
            await self._ready.wait()


class InProcessBlockHub(BlockHub):
    """Fan-out inside one process. `job_dir(job_id)` locates a job's JobOutput for replays."""

    def __init__(self, job_dir: Callable[[str], Path], max_buffered_blocks: int = 8,
                 max_buffered_bytes: int = 32 << 20, remember_finished: int = 4096):
        self._job_dir = job_dir
        self.max_buffered_blocks = max_buffered_blocks
        self.max_buffered_bytes = max_buffered_bytes
        self._lock = threading.Lock()
        self._subscribers: dict[str, set[_Buffer]] = {}
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
            buf.offer((_END, event), always=True)  # the end is never what overflows a buffer

    def forget(self, job_id: str) -> None:
        """Drop the remembered end of a job (it was deleted)."""
        with self._lock:
            self._finished.pop(job_id, None)

    def viewers(self, job_id: Optional[str] = None) -> int:
        with self._lock:
            if job_id is not None:
                return len(self._subscribers.get(job_id, ()))
            return sum(len(s) for s in self._subscribers.values())

    def finished_event(self, job_id: str) -> Optional[dict]:
        with self._lock:
            return self._finished.get(job_id)

    # -- viewer side -------------------------------------------------------------------------
    def subscribe(self, job_id: str, from_block: int = 0) -> "Subscription":
        """Call from the event loop that will iterate the subscription."""
        if from_block < 0:
            raise ValueError(f"from_block must be >= 0, got {from_block}")
        buf = _Buffer(asyncio.get_running_loop(), self.max_buffered_blocks, self.max_buffered_bytes)
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

        replay = _Replay(self._job_dir(job_id), job_id, from_block)
        return Subscription(buf, replay, ended, unregister, self.max_buffered_blocks)


class Subscription:
    """An async iterator of (event, payload) for one viewer; see BlockHub.subscribe.

    A viewer whose socket is stuck in a send never asks for the next item, so the overflow
    is also announced actively: `await overflowed()` returns the StreamClosed to close with.
    """

    def __init__(self, buf: _Buffer, replay: "_Replay", ended: Optional[dict], unregister, max_blocks: int):
        self._buf, self._replay, self._ended = buf, replay, ended
        self._unregister, self._max_blocks = unregister, max_blocks
        self._gen = self._items()
        self._in_flight = False  # a block was handed out and the next one not yet asked for

    @property
    def resume_index(self) -> int:
        """The first block this viewer may not have received in full: where to reconnect."""
        return self._replay.next_index - (1 if self._in_flight else 0)

    def _closed(self) -> StreamClosed:
        return StreamClosed(CLOSE_TOO_SLOW, f"client too slow: over {self._max_blocks} blocks unsent; "
                                            f"reconnect with from_block={self.resume_index}")

    async def overflowed(self) -> StreamClosed:
        await self._buf.overflow_event.wait()
        return self._closed()

    def __aiter__(self):
        return self

    async def __anext__(self):
        self._in_flight = False  # asking for the next item: the previous one was sent
        item = await self._gen.__anext__()
        self._in_flight = item[1] is not None
        return item

    async def aclose(self) -> None:
        await self._gen.aclose()
        self._unregister()

    async def _items(self):
        replay, ended = self._replay, self._ended
        try:
            while True:
                async for item in replay.from_disk():
                    yield item
                if ended is not None:
                    yield ended, None
                    return
                try:
                    item = await self._buf.get()
                except OverflowError:
                    raise self._closed() from None
                if item[0] is _END:
                    ended = item[1]  # catch up from disk first (loop), then end
                    continue
                event, segment = item
                index = event.get("index", -1)
                if index != replay.next_index:
                    # < : already replayed from disk; > : a gap (cannot happen, blocks are
                    # published in order), which the disk fills on the next pass.
                    continue
                yield replay.live(event, segment)
        finally:
            self._unregister()


class _Replay:
    """The disk side of one subscription: which block is next, and the init segment once.

    `source` is a job's JobOutput directory, or (the cluster's shared storage) a callable that
    returns a reader with JobOutput's read methods, or None while no block is stored yet."""

    def __init__(self, source, job_id: str, from_block: int):
        self.job_dir, self.job_id = source, job_id
        self.next_index = from_block
        self._output: Optional[JobOutput] = None
        self._init_sent = False

    def _open(self) -> Optional[JobOutput]:
        if self._output is None and callable(self.job_dir):
            self._output = self.job_dir()
        elif self._output is None and JobOutput.exists(self.job_dir):
            try:
                self._output = JobOutput.open(self.job_dir)
            except FileNotFoundError:  # deleted between the two looks
                return None
        return self._output

    def _payload(self, output: JobOutput, segment: bytes) -> bytes:
        if self._init_sent:
            return segment
        self._init_sent = True
        return output.init_segment() + segment

    async def from_disk(self):
        """Blocks next_index.. that are on disk now (the directory is re-read until caught up)."""
        try:
            async for item in self._from_disk():
                yield item
        except FileNotFoundError:  # the job was deleted while being replayed
            raise StreamClosed(1000, "the video was deleted") from None

    async def _from_disk(self):
        while True:
            output = await asyncio.to_thread(self._open)
            if output is None:
                return
            written = await asyncio.to_thread(output.refresh)
            if self.next_index >= written:
                return
            while self.next_index < written:
                index = self.next_index
                segment = await asyncio.to_thread(output.segment, index)
                event = dict(output.event(index), id=self.job_id)
                payload = await asyncio.to_thread(self._payload, output, segment)
                self.next_index += 1
                yield event, payload

    def live(self, event: dict, segment: bytes) -> tuple[dict, bytes]:
        output = self._open()  # the block is on disk, so the directory (and init) exist
        payload = self._payload(output, segment) if output is not None else segment
        self.next_index += 1
        return event, payload
