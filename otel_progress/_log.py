"""The seed's readable run log, bounded: the head and a tail are kept, the middle is counted.

A task that notifies a million times must not grow memory or the payload: lines go into a head
buffer until it is full, then into a tail ring whose character budget evicts the oldest lines.

Lines are kept without their newline (each counts one character for it in the budgets) and the
newlines are added when the log is read: a line costs no string concatenation when it is made,
which is on every section and notification.
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
        size = len(line) + 1
        tail = self._tail
        if not tail and self._head_chars + size <= HEAD_CHARS:
            self._head.append(line)
            self._head_chars += size
            return
        tail.append(line)
        chars = self._tail_chars + size
        if chars > TAIL_CHARS:  # inline, not a helper: in a long task every line evicts one
            popleft = tail.popleft
            while chars > TAIL_CHARS and len(tail) > 1:
                chars -= len(popleft()) + 1
                self._omitted += 1
        self._tail_chars = chars

    def append2(self, first: str, second: str) -> None:
        """Add two lines: the same log as two :meth:`append` calls, in one call.

        Evicting once after both lines leaves the same tail as evicting after each: the oldest
        lines go first either way, until the tail fits (or one line is left)."""
        if not self._tail:  # the head fills line by line
            self.append(first)
            self.append(second)
            return
        tail = self._tail
        tail.append(first)
        tail.append(second)
        chars = self._tail_chars + len(first) + len(second) + 2
        if chars > TAIL_CHARS:
            popleft = tail.popleft
            while chars > TAIL_CHARS and len(tail) > 1:
                chars -= len(popleft()) + 1
                self._omitted += 1
        self._tail_chars = chars

    @property
    def omitted(self) -> int:
        """Lines dropped from the middle."""
        return self._omitted

    def text(self) -> str:
        """The log as one string, with a marker line where lines were dropped."""
        parts = list(self._head)
        if self._omitted:
            parts.append(f"\t… {self._omitted} lines omitted …")
        parts.extend(self._tail)
        if not parts:
            return ""
        parts.append("")  # the last line's newline
        return "\n".join(parts)

    def lines(self) -> list[str]:
        """The kept lines (marker included), without newlines."""
        return self.text().splitlines()
