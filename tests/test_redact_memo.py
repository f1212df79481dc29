"""The default redactor's memo answers repeats exactly as a fresh scan would, and stays bounded."""

from __future__ import annotations

from otel_progress import _redact
from otel_progress._redact import default_redact, redact


def test_repeated_texts_redact_as_a_fresh_scan_and_the_memo_stays_bounded() -> None:
    """Secrets are redacted on the first and every later call; 2,000 distinct texts keep at
    most _MEMO_SIZE entries, and long texts are never kept."""
    texts = ["fetched 40 of 100 files", "redis://:hunter2@db:6379/0", "password=hunter2",
             "Authorization: Bearer abc.def.ghi", "token " + "x" * 400]
    first = [redact(t) for t in texts]
    again = [redact(t) for t in texts]
    assert [default_redact(t) for t in texts] == first == again
    assert "hunter2" not in "".join(again)
    for i in range(2_000):
        assert default_redact(f"step {i} api_key={i}") == redact(f"step {i} api_key={i}")
    assert len(_redact._memo) <= _redact._MEMO_SIZE
    assert all(len(key) <= _redact._MEMO_TEXT for key in _redact._memo)
