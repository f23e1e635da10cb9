"""What both block hubs share: a viewer's bounded buffer, the replay of stored blocks, the
Subscription a websocket iterates (the hubs: embedded.hub and cluster.hub).

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

The interface is server.interfaces.BlockHub.
"""
from __future__ import annotations

import asyncio
import collections
import threading
from typing import Callable, Deque, Optional

from sana_serve.server.interfaces import OutputReader

__all__ = ["Subscription", "ViewerBuffer", "Replay", "StreamClosed", "END", "CLOSE_TOO_SLOW"]

# 1013 "Try Again Later": the server is fine, this client fell behind; it may reconnect with
# from_block. (1008 "policy violation" would suggest the client did something forbidden.)
CLOSE_TOO_SLOW = 1013


class StreamClosed(Exception):
    """The subscription was ended by the server; `code` and `reason` go into the websocket close."""

    def __init__(self, code: int, reason: str):
        super().__init__(f"{code}: {reason}")
        self.code, self.reason = code, reason


END = object()  # the item a hub queues after the last block


class ViewerBuffer:
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


class Subscription:
    """An async iterator of (event, payload) for one viewer; see BlockHub.subscribe.

    A viewer whose socket is stuck in a send never asks for the next item, so the overflow
    is also announced actively: `await overflowed()` returns the StreamClosed to close with.
    """

    def __init__(self, buf: ViewerBuffer, replay: "Replay", ended: Optional[dict], unregister, max_blocks: int):
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
                if item[0] is END:
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


class Replay:
    """The stored side of one subscription: which block is next, and the init segment once.

    `open_reader()` returns a reader of the job's stored blocks (JobFiles.replay_reader), or
    None while no block is stored yet."""

    def __init__(self, open_reader: Callable[[], Optional[OutputReader]], job_id: str, from_block: int):
        self.open_reader, self.job_id = open_reader, job_id
        self.next_index = from_block
        self._output: Optional[OutputReader] = None
        self._init_sent = False

    def _open(self) -> Optional[OutputReader]:
        if self._output is None:
            self._output = self.open_reader()
        return self._output

    def _payload(self, output: OutputReader, segment: bytes) -> bytes:
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
