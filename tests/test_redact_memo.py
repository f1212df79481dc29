"""The default redactor's memo answers repeats exactly as a fresh scan would, and stays bounded."""

from __future__ import annotations

from otel_progress import _redact
from otel_progress._redact import default_redact, redact
from otel_progress._safety import safe_redacted, safe_str


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


def test_secret_key_answers_are_remembered_exactly_and_the_memo_stays_bounded() -> None:
    """A key asked twice gets the regex's answer both times; 2,000 distinct keys keep at most
    _MEMO_SIZE answers; a non-string key is never a secret key."""
    keys = ["otel_progress.percent", "password", "db.connection_string", "api_key",
            "Authorization", "task.name", "x" * 400 + ".token"]
    fresh = [_redact.SECRET_KEY.search(k) is not None for k in keys]
    assert fresh == [_redact.is_secret_key(k) for k in keys] == [_redact.is_secret_key(k)
                                                                  for k in keys]
    assert [False, True, False, True, True, False, True] == fresh
    for i in range(2_000):
        key = f"attr.{i}.secret" if i % 2 else f"attr.{i}"
        assert (i % 2 == 1) == _redact.is_secret_key(key) == _redact.is_secret_key(key)
    assert len(_redact._secret_keys) <= _redact._MEMO_SIZE
    assert not _redact.is_secret_key(42)


def test_safe_redacted_answers_like_redact_of_safe_str_and_forgets_a_changed_redactor() -> None:
    """Repeats give what redact(safe_str()) gives, also after the redactor changes (the memo
    is emptied) and never from a custom redactor's results (it is not assumed pure)."""
    texts = ["fetched 40 of 100 files", "password=hunter2", "\ud800 bad", "x" * 2000, 42]
    try:
        for _ in range(2):
            assert [redact(safe_str(t)) for t in texts] == [safe_redacted(t) for t in texts]
        _redact.set_redactor(lambda text: text.upper())
        assert "PASSWORD=HUNTER2" == safe_redacted("password=hunter2")
        assert {} == _redact.cleaned
        _redact.set_redactor(False)
        assert "password=hunter2" == safe_redacted("password=hunter2")
    finally:
        _redact.set_redactor(True)
    assert "hunter2" not in safe_redacted("password=hunter2")
