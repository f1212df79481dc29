"""Redaction: the one function every writer calls before a string leaves the process.

Messages, section names, attribute values, exception messages, stack traces and the log go into
spans, payloads and history rows; any of them may carry a password, a token or a connection
string the task happened to hold. :func:`redact` is applied where each such string is made
(``_sections``, ``_observer``, ``_run``, ``_spans``, ``_payload``), again on every span the
export pipeline sends and on every body the status app answers, so no single missed call site
leaks. The default pattern set (:func:`default_redact`) is documented in the README; a user's
``configure(redact=callable)`` replaces it (compose with ``default_redact`` to keep it).

Standard library only: upper rooms (web, history) reach this through ``_safety``.
"""

from __future__ import annotations

import logging
import re
import threading
import traceback
from collections.abc import Callable, Mapping
from typing import Any, Final

REDACTED: Final = "[REDACTED]"
"""What a secret is replaced with."""

_SECRET_WORDS: Final = (
    r"password|passwd|passphrase|pwd|secret|token|api[_-]?key|apikey|access[_-]?key|"
    r"private[_-]?key|authorization|credentials?|cookie|session[_-]?id|auth"
)
_WORD: Final = rf"(?<![a-z])(?:{_SECRET_WORDS})(?![a-z])"
"""A secret word standing alone in an identifier: ``db_password``, ``X-Api-Key``,
``refresh_token`` match; ``author``, ``tokens``, ``passage`` do not."""

SECRET_KEY: Final = re.compile(_WORD, re.IGNORECASE)
"""Mapping keys (attribute names, meta keys, history columns) whose value is withheld whole."""

_KEY_VALUE: Final = re.compile(
    rf"(?i)({_WORD}[\w.-]*[\"']?\s*[:=]\s*[\"']?)"
    r"(?:(?:bearer|basic|digest|token)\s+)?[^\s\"',;&}\]]+")
"""key=value / key: value / "key": "value" where the key names a secret."""
_URL: Final = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^\s:/@]*):[^\s@/]+@")
"""Credentials in a URL: scheme://user:password@host keeps the user."""
_SCHEME: Final = re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{8,}")
"""A bare Authorization scheme: "Bearer abc.def"."""
_PEM: Final = re.compile(
    r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?(?:-----END [A-Z ]*PRIVATE KEY-----|$)", re.DOTALL)
_TOKENS: Final = (  # (a substring that must occur, the token's shape)
    ("eyJ", re.compile(r"\beyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}")),  # JWT
    ("AKIA", re.compile(r"\bAKIA[0-9A-Z]{16}\b")),  # AWS access key id
    ("ASIA", re.compile(r"\bASIA[0-9A-Z]{16}\b")),  # AWS temporary access key id
    ("gh", re.compile(r"\bgh[pousr]_[A-Za-z0-9]{30,}\b")),  # GitHub
    ("xox", re.compile(r"\bxox[abposr]-[A-Za-z0-9-]{10,}")),  # Slack
    ("sk", re.compile(r"\bsk[-_](?:live_|test_)?[A-Za-z0-9]{20,}\b")),  # Stripe, OpenAI, ...
)
_WORDS: Final = ("pass", "pwd", "secret", "token", "key", "auth", "credential", "cookie",
                 "session")
"""Substrings of every secret word: text holding none of them (lower-cased) skips the key=value
pattern. Plain ``in`` tests: Python's ``re`` has no fast multi-literal scan."""

Redactor = Callable[[str], str]

_log = logging.getLogger("otel_progress")
_warned = threading.Event()


def default_redact(text: str) -> str:
    """The default pattern set: secrets in ``key=value`` text, URLs, headers, known tokens.

    Replaces with ``[REDACTED]``: the value after a key naming a secret (password, passwd,
    passphrase, pwd, secret, token, api key, access key, private key, authorization,
    credential(s), cookie, session id, auth) and ``=`` or ``:``, quoted or not, with its
    ``Bearer``/``Basic`` scheme; the password of ``scheme://user:password@host``; a bare
    ``Bearer``/``Basic`` credential; JWTs; AWS access key ids; GitHub, Slack and ``sk-`` keys;
    PEM private key blocks::

        default_redact("redis://:hunter2@db:6379/0")   # 'redis://:[REDACTED]@db:6379/0'
    """
    low = text.lower()
    for word in _WORDS:
        if word in low:
            text = _KEY_VALUE.sub(rf"\1{REDACTED}", text)
            if "bearer" in low or "basic" in low:
                text = _SCHEME.sub(rf"\1 {REDACTED}", text)
            if "private key" in low:
                text = _PEM.sub(REDACTED, text)
            break
    else:
        if "bearer" in low or "basic" in low:
            text = _SCHEME.sub(rf"\1 {REDACTED}", text)
    if "://" in text:
        text = _URL.sub(rf"\1:{REDACTED}@", text)
    for needle, pattern in _TOKENS:
        if needle in text:
            text = pattern.sub(REDACTED, text)
    return text


_redactor: Redactor | None = default_redact
_memo: dict[str, str] = {}
"""Texts the default set redacted lately (at most ``_MEMO_SIZE``, each ≤ ``_MEMO_TEXT``)."""
_MEMO_SIZE: Final = 512
_MEMO_TEXT: Final = 256


cleaned: dict[str, str] = {}
"""Texts as given and what ``_safety.safe_redacted`` made of them lately: filled only while the
redactor is pure (the default set, or none), emptied whenever the redactor changes."""


def set_redactor(redactor: Redactor | bool) -> None:
    """``True``: the default pattern set; ``False``: nothing redacted; a callable: it alone."""
    global _redactor
    if redactor is True:
        _redactor = default_redact
    elif redactor is False:
        _redactor = None
    elif callable(redactor):
        _redactor = redactor
    else:
        raise TypeError(f"redact must be a callable (str) -> str or a bool, not {redactor!r}")
    cleaned.clear()


def redactor() -> Redactor | None:
    """The redactor in effect (None: redaction is off)."""
    return _redactor


def redact(text: str) -> str:
    """``text`` with secrets replaced, by the configured redactor.

    A user's redactor that raises or returns something else than a ``str`` withholds the whole
    text (``[REDACTED]``), logged once: a broken redactor must not leak what it should hide, nor
    break the task.
    """
    fn = _redactor
    if fn is None:
        return text
    if fn is default_redact:
        # A task repeats its messages and names: the default set is a pure function, so a
        # bounded memo answers a repeat with one dict lookup instead of ~1 us of scanning.
        done = _memo.get(text)
        if done is None:
            done = default_redact(text)
            if len(text) <= _MEMO_TEXT:
                if len(_memo) >= _MEMO_SIZE:
                    _memo.clear()
                _memo[text] = done
        return done
    try:
        out = fn(text)
    except Exception as exc:
        _warn(f"raised {type(exc).__name__}")
        return REDACTED
    if not isinstance(out, str):
        _warn(f"returned {type(out).__name__}, not str")
        return REDACTED
    return out


def _warn(why: str) -> None:
    if not _warned.is_set():
        _warned.set()
        _log.warning("otel_progress: the redact callable %s; the text is withheld whole", why)


_secret_keys: dict[str, bool] = {}
"""Keys asked about lately: span attributes repeat the same few dozen names, and the exporter
asks for every attribute of every span (a regex search each was ~12 % of the export thread)."""


def is_secret_key(key: object) -> bool:
    """Whether a mapping key names a secret (its value is then withheld whole)."""
    if not isinstance(key, str):
        return False
    known = _secret_keys.get(key)
    if known is None:
        known = SECRET_KEY.search(key) is not None
        if len(key) <= _MEMO_TEXT:
            if len(_secret_keys) >= _MEMO_SIZE:
                _secret_keys.clear()
            _secret_keys[key] = known
    return known


def redact_value(key: object, value: Any) -> Any:
    """A keyed value (an attribute, a meta entry) with secrets replaced.

    The value of a key that names a secret (:data:`SECRET_KEY`, whatever the redactor) becomes
    ``[REDACTED]`` whatever it is; strings are
    redacted as text; lists, tuples and mappings element by element; numbers pass unchanged.
    """
    if _redactor is None:
        return value
    if is_secret_key(key):
        return REDACTED
    return redact_json(value)


def redact_json(value: Any, _depth: int = 0) -> Any:
    """Every string in a JSON-like value redacted (secret-named keys withheld), bounded depth.

    For whole documents: a payload, a history row, an HTTP body. Returns the same object when
    nothing changed (no copy of a 16 KiB payload per read in the common case)."""
    if _redactor is None:
        return value
    cls = value.__class__
    if cls is str:
        return redact(value)
    if _depth > 64:
        return value
    if isinstance(value, Mapping):
        changed = False
        out: dict[Any, Any] = {}
        for key, item in value.items():
            if is_secret_key(key) and item is not None \
                    and not isinstance(item, (bool, int, float)):
                new: Any = REDACTED
            else:
                new = redact_json(item, _depth + 1)
            changed = changed or new is not item
            out[key] = new
        return out if changed else value
    if isinstance(value, (list, tuple)):
        items = [redact_json(item, _depth + 1) for item in value]
        if any(new is not old for new, old in zip(items, value, strict=True)):
            return items if cls is list else tuple(items)
        return value
    return value


class LogFilter(logging.Filter):
    """Redacts otel_progress's own log records: the message, its arguments and the traceback.

    Backend errors quote connection URLs (``redis://:password@host``); internal errors carry a
    traceback whose frames may show a task's secrets."""

    def filter(self, record: logging.LogRecord) -> bool:
        if _redactor is None:
            return True
        try:
            message = record.getMessage()
        except Exception:  # a malformed record: logging itself reports it
            return True
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, ()
        if record.exc_info and record.exc_info[1] is not None and not record.exc_text:
            try:
                text = "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
            except Exception:
                text = ""
            record.exc_text = redact(text)
        return True
