"""Bounded capture of a program's stdout/stderr: the pipeline's memory use per stream is O(limit)."""

from __future__ import annotations


class _Capture:
    """Bounded capture of one stream: the first ``limit - tail`` bytes and the last ``tail`` bytes."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.tail_limit = min(4096, limit // 4)
        self.head = bytearray()
        self.tail = bytearray()
        self.total = 0

    def feed(self, data: bytes) -> None:
        self.total += len(data)
        room = self.limit - self.tail_limit - len(self.head)
        if room > 0:
            self.head += data[:room]
            data = data[room:]
        if data and self.tail_limit:
            self.tail += data
            if len(self.tail) > self.tail_limit:
                del self.tail[: len(self.tail) - self.tail_limit]

    @property
    def truncated(self) -> bool:
        return self.total > self.limit

    def text(self) -> str:
        if not self.truncated:
            return (bytes(self.head) + bytes(self.tail)).decode("utf-8", "replace")
        omitted = self.total - len(self.head) - len(self.tail)
        marker = f"\n... [{omitted} bytes omitted] ...\n".encode()
        return (bytes(self.head) + marker + bytes(self.tail)).decode("utf-8", "replace")
