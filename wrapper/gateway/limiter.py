"""At most N requests in flight to one upstream, and a bounded FIFO queue behind them."""

from __future__ import annotations

import asyncio
from collections import deque


class QueueFull(Exception):
    """The queue already holds max_queue waiting requests."""


class QueueTimeout(Exception):
    """A request waited in the queue longer than allowed."""


class Limiter:
    def __init__(self, max_concurrency: int, max_queue: int):
        self.max_concurrency = max_concurrency
        self.max_queue = max_queue
        self.in_flight = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def queued(self) -> int:
        return len(self._waiters)

    def try_acquire(self) -> bool:
        """Take a free slot if there is one and nobody is waiting."""
        if self.in_flight < self.max_concurrency and not self._waiters:
            self.in_flight += 1
            return True
        return False

    async def acquire(self, timeout: float) -> None:
        if self.in_flight < self.max_concurrency and not self._waiters:
            self.in_flight += 1
            return
        if len(self._waiters) >= self.max_queue:
            raise QueueFull
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await asyncio.wait_for(asyncio.shield(waiter), timeout)
        except BaseException as exc:
            if waiter.done() and not waiter.cancelled():
                self.release()  # the slot was handed to us just as we gave up: pass it on
            else:
                waiter.cancel()
                try:
                    self._waiters.remove(waiter)
                except ValueError:
                    pass
            if isinstance(exc, asyncio.TimeoutError):
                raise QueueTimeout from None
            raise

    def release(self) -> None:
        """Free a slot: hand it to the oldest waiter (in_flight unchanged) or decrement."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self.in_flight -= 1
