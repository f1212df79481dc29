"""The seed's readable run log, bounded: the head and a tail are kept, the middle is counted.

A task that notifies a million times must not grow memory or the payload: lines go into a head
buffer until it is full, then into a tail ring whose character budget evicts the oldest lines.
"""

from __future__ import annotations

from collections import deque
from typing import Final

HEAD_CHARS: Final = 2048
"""Characters of the log's beginning that are always kept."""
TAIL_CHARS: Final = 4096
"""Characters of the log's end that are always kept."""


class BoundedLog:
    """Append-only text log with bounded memory: ``head + marker + tail``."""

    __slots__ = ("_head", "_head_chars", "_omitted", "_tail", "_tail_chars")

    def __init__(self) -> None:
        self._head: list[str] = []
        self._head_chars = 0
        self._tail: deque[str] = deque()
        self._tail_chars = 0
        self._omitted = 0

    def append(self, line: str) -> None:
        """Add one line (without its newline)."""
        entry = line + "\n"
        size = len(entry)
        if not self._tail and self._head_chars + size <= HEAD_CHARS:
            self._head.append(entry)
            self._head_chars += size
            return
        self._tail.append(entry)
        self._tail_chars += size
        while self._tail_chars > TAIL_CHARS and len(self._tail) > 1:
            self._tail_chars -= len(self._tail.popleft())
            self._omitted += 1

    @property
    def omitted(self) -> int:
        """Lines dropped from the middle."""
        return self._omitted

    def text(self) -> str:
        """The log as one string, with a marker line where lines were dropped."""
        parts = list(self._head)
        if self._omitted:
            parts.append(f"\t… {self._omitted} lines omitted …\n")
        parts.extend(self._tail)
        return "".join(parts)

    def lines(self) -> list[str]:
        """The kept lines (marker included), without newlines."""
        return self.text().splitlines()
