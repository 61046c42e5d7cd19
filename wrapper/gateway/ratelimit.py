"""Per-key requests-per-minute: a sliding 60-second window of request times, in memory."""

from __future__ import annotations

import math
import time
from collections import deque

WINDOW_S = 60.0


class RateLimiter:
    def __init__(self, clock=time.monotonic):
        self._clock = clock
        self._hits: dict[str, deque[float]] = {}

    def hit(self, key_id: str, rpm: int) -> float:
        """Count one request; returns 0 when allowed, else the seconds to wait before retrying."""
        now = self._clock()
        hits = self._hits.get(key_id)
        if hits is None:
            hits = self._hits[key_id] = deque()
        while hits and now - hits[0] >= WINDOW_S:
            hits.popleft()
        if len(hits) >= rpm:
            return max(WINDOW_S - (now - hits[0]), 0.001)
        hits.append(now)
        return 0.0


def retry_after_header(seconds: float) -> str:
    return str(max(1, math.ceil(seconds)))
