"""The seed's readable run log, bounded: the head and a tail are kept, the middle is counted.

A task that notifies a million times must not grow memory or the payload: lines go into a head
buffer until it is full, then into a tail whose character budget drops the oldest lines.

Every line of the seed's log is indented by at least one tab. Lines are kept without that tab
and without their newline (each still counts both in the budgets), and both are added when the
log is read: a notification's line is its text itself, with no string made on the hot path.

The tail is cut to its budget when the log is read, and by the writer only once it holds twice
the budget: an append is then one ``list.append``, the cut one slice deletion. Cutting after
many lines keeps what cutting after each line keeps (the longest run of newest lines that fits,
at least one line), so the text is the same; memory stays bounded by twice the budget.
"""

from __future__ import annotations

import threading
from typing import Final

HEAD_CHARS: Final = 2048
"""Characters of the log's beginning that are always kept."""
TAIL_CHARS: Final = 4096
"""Characters of the log's end that are always kept."""
INDENT: Final = "\t"
"""What begins every line: :meth:`BoundedLog.add` takes a line without it."""
_CUT_AT: Final = 2 * TAIL_CHARS
"""Tail characters at which the writer cuts the tail to its budget."""


class BoundedLog:
    """Append-only text log with bounded memory: ``head + marker + tail``.

    Reading never changes the log. Threads of one run may write at once: appends are single
    list operations, and the cut, which is rare, is serialised and counts the tail afresh."""

    __slots__ = ("_cut_lock", "_head", "_head_chars", "_omitted", "_tail", "_tail_chars")

    def __init__(self) -> None:
        self._head: list[str] = []
        self._head_chars = 0
        self._tail: list[str] = []
        self._tail_chars = 0
        self._omitted = 0
        """Lines cut from the tail by the writer (a read adds the ones it would cut now)."""
        self._cut_lock = threading.Lock()

    def add(self, rest: str) -> None:
        """Add the line ``INDENT + rest`` (``rest`` without its newline)."""
        tail = self._tail
        if tail:  # past the head: every line of a long task comes here
            tail.append(rest)
            chars = self._tail_chars = self._tail_chars + len(rest) + 2  # indent, newline
            if chars > _CUT_AT:
                self._cut()
            return
        size = len(rest) + 2
        if self._head_chars + size <= HEAD_CHARS:
            self._head.append(rest)
            self._head_chars += size
            return
        tail.append(rest)
        self._tail_chars = size

    def add2(self, first: str, second: str) -> None:
        """Add two lines: the same log as two :meth:`add` calls, in one call."""
        tail = self._tail
        if not tail:  # the head fills line by line
            self.add(first)
            self.add(second)
            return
        tail.append(first)
        tail.append(second)
        chars = self._tail_chars = self._tail_chars + len(first) + len(second) + 4
        if chars > _CUT_AT:
            self._cut()

    def _cut(self) -> None:
        """Drop the oldest tail lines until the tail fits its budget (one line is kept)."""
        with self._cut_lock:  # two writers cutting at once would drop the same lines twice
            tail = self._tail
            chars = sum(map(len, tail)) + 2 * len(tail)  # afresh: appends race on the count
            first = _first_kept(tail, chars)
            self._tail_chars = chars - sum(map(len, tail[:first])) - 2 * first
            del tail[:first]  # the oldest lines: other writers only append at the end
            self._omitted += first

    def _view(self) -> tuple[list[str], int]:
        """The tail lines the budget keeps and the lines omitted, without changing the log."""
        omitted = self._omitted
        lines = self._tail[:]  # one C call: a consistent copy while the writer appends
        first = _first_kept(lines, sum(map(len, lines)) + 2 * len(lines))
        return lines[first:], omitted + first

    @property
    def omitted(self) -> int:
        """Lines dropped from the middle."""
        return self._view()[1]

    def text(self) -> str:
        """The log as one string, with a marker line where lines were dropped."""
        tail, omitted = self._view()
        parts = list(self._head)
        if omitted:
            parts.append(f"… {omitted} lines omitted …")
        parts.extend(tail)
        if not parts:
            return ""
        return INDENT + "\n\t".join(parts) + "\n"

    def lines(self) -> list[str]:
        """The kept lines (marker included), without newlines."""
        return self.text().splitlines()


def _first_kept(tail: list[str], chars: int) -> int:
    """The index of the oldest of ``tail``'s lines (``chars`` characters in all) that its budget
    keeps: the longest run of newest lines that fits, and at least the newest line."""
    last = len(tail) - 1
    first = 0
    while chars > TAIL_CHARS and first < last:
        chars -= len(tail[first]) + 2
        first += 1
    return first
