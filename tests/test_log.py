"""The bounded seed log: the text it keeps is the plain head + marker + tail rule's, exactly."""

from __future__ import annotations

import threading
from collections import deque

from hypothesis import given, settings
from hypothesis import strategies as st

from otel_progress._log import HEAD_CHARS, INDENT, TAIL_CHARS, BoundedLog


class _Reference:
    """The rule written plainly: each line with its indent and newline, evicted one append at
    a time."""

    def __init__(self) -> None:
        self.head: list[str] = []
        self.head_chars = 0
        self.tail: deque[str] = deque()
        self.tail_chars = 0
        self.omitted = 0

    def append(self, rest: str) -> None:
        entry = INDENT + rest + "\n"
        if not self.tail and self.head_chars + len(entry) <= HEAD_CHARS:
            self.head.append(entry)
            self.head_chars += len(entry)
            return
        self.tail.append(entry)
        self.tail_chars += len(entry)
        while self.tail_chars > TAIL_CHARS and len(self.tail) > 1:
            self.tail_chars -= len(self.tail.popleft())
            self.omitted += 1

    def text(self) -> str:
        marker = [f"\t… {self.omitted} lines omitted …\n"] if self.omitted else []
        return "".join([*self.head, *marker, *self.tail])


LINES = st.one_of(
    st.text(max_size=40),
    # long lines, some longer than the tail budget on its own (built, not drawn char by char:
    # hypothesis draws at most a few KiB per example)
    st.builds(lambda char, size: char * size, st.sampled_from("x\u00e9\n\t"),
              st.integers(0, 2 * TAIL_CHARS)),
    st.sampled_from([" - step", "\tSuccessfully completed", "\tTime spent: 0h0m",
                     "\tSee error message:\n<class 'ZeroDivisionError'>: division by zero"]),
)
OPS = st.lists(st.one_of(st.tuples(LINES), st.tuples(LINES, LINES)), max_size=300)


@settings(max_examples=300, deadline=None)
@given(ops=OPS)
def test_the_log_keeps_the_reference_rules_text(ops: list[tuple[str, ...]]) -> None:
    """Any mix of one- and two-line adds gives the reference's text, marker and count, read
    at any point (the tail is cut lazily: a read must not see or change the difference)."""
    log, reference = BoundedLog(), _Reference()
    for i, op in enumerate(ops):
        if len(op) == 1:
            log.add(op[0])
        else:
            log.add2(*op)
        for line in op:
            reference.append(line)
        if i % 7 == 0:
            assert reference.text() == log.text()
    assert reference.text() == log.text()
    assert reference.omitted == log.omitted
    assert reference.text().splitlines() == log.lines()


def test_a_million_lines_keep_the_log_bounded() -> None:
    """Past the head, the tail budget holds: the text stays under head + tail + a marker."""
    log = BoundedLog()
    for i in range(100_000):
        log.add(f"notification {i}")
    text = log.text()
    assert text.endswith("\tnotification 99999\n")
    assert len(text) <= HEAD_CHARS + TAIL_CHARS + 100


def test_concurrent_writers_keep_the_count_and_the_bound() -> None:
    """Threads of one run adding at once: every line is kept or counted as omitted, and the
    tail stays within twice its budget."""
    log = BoundedLog()
    threads = [threading.Thread(target=lambda t=t: [log.add(f"thread {t} line {i}")
                                                    for i in range(20_000)])
               for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    lines = log.lines()
    marker = [line for line in lines if "lines omitted" in line]
    assert 1 == len(marker)
    assert 80_000 == len(lines) - 1 + log.omitted
    assert sum(len(line) + 2 for line in log._tail) <= 2 * TAIL_CHARS + 100
