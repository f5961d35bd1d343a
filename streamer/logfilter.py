"""A log filter that keeps a storm of identical lines from filling the disk.

When the process runs out of descriptors, asyncio's accept loop logs the same error for
every attempt (202 MB in 40 s was seen). The same message from the same place is let
through once per ``interval_s``; what was held back is counted on the next line let
through.
"""

from __future__ import annotations

import logging
import time


class RepeatFilter(logging.Filter):
    def __init__(self, interval_s: float = 10.0) -> None:
        super().__init__()
        self.interval_s = interval_s
        self._last: dict[tuple[str, int, str], tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, record.lineno, str(record.msg))
        now = time.monotonic()
        seen = self._last.get(key)
        if seen is not None and now - seen[0] < self.interval_s:
            self._last[key] = (seen[0], seen[1] + 1)
            return False
        if seen is not None and seen[1]:
            record.msg = f"{record.msg} [{seen[1]} more like this in the last " \
                         f"{now - seen[0]:.0f} s]"
        self._last[key] = (now, 0)
        if len(self._last) > 10_000:  # bounded: forget the oldest keys
            for old in sorted(self._last, key=lambda k: self._last[k][0])[:5_000]:
                del self._last[old]
        return True


def install(interval_s: float = 10.0) -> None:
    """Add the filter to every handler of the root logger."""
    for handler in logging.getLogger().handlers:
        handler.addFilter(RepeatFilter(interval_s))
