"""Telemetry never breaks the task it observes: clamps, safe text, bounded waits, the one guard.

Every public entry point that runs inside a user's task goes through :class:`guard` (as a
decorator or a ``with`` block) or uses the clamps below. Internal errors are logged once per call
site and swallowed, except in strict mode (``otel_progress.testing.strict()``, or the environment
variable ``OTEL_PROGRESS_STRICT=1`` that the test suite sets for its workers and child
processes) where they are re-raised so bugs are not hidden.
"""

from __future__ import annotations

import functools
import logging
import math
import numbers
import os
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any, Final, ParamSpec, TypeVar

from otel_progress._attributes import MAX_MESSAGE
from otel_progress._redact import (  # re-exported: upper rooms reach redaction through here
    REDACTED,
    LogFilter,
    cleaned,
    default_redact,
    is_secret_key,
    redact,
    redact_json,
    redact_value,
    redactor,
)

logger: Final = logging.getLogger("otel_progress")
"""The one logger otel_progress writes to (its records are redacted: :class:`LogFilter`)."""
if not any(isinstance(f, LogFilter) for f in logger.filters):
    logger.addFilter(LogFilter())

__all__ = [
    "REDACTED", "AttrValue", "as_number", "attribute_value", "clamp_percent", "default_redact",
    "exception_class_line", "exception_text", "format_message", "guard", "in_background",
    "internal_error", "is_secret_key", "is_strict", "log_once", "logger", "redact",
    "redact_json", "redact_value", "safe_redacted", "safe_str", "set_strict", "type_name",
]

_P = ParamSpec("_P")
_R = TypeVar("_R")

STRICT_ENV: Final = "OTEL_PROGRESS_STRICT"
"""``1`` turns strict mode on at import (worker processes of a test suite)."""
INTERNAL_ERROR_MARK: Final = "otel_progress internal error"
"""Start of the log line of a swallowed internal error (tests grep worker logs for it)."""

_strict = os.environ.get(STRICT_ENV, "").strip().lower() in ("1", "true", "yes")
_logged_sites: set[str] = set()
_logged_lock = threading.Lock()

MAX_NAME: Final = 200
"""Characters kept of a section name in the payload tree."""
MAX_ATTRIBUTE_TEXT: Final = 4096
"""Characters kept of a caller's string attribute value (the SDK's SpanLimits cap it again)."""
MAX_NUMBER: Final = 1e15
"""Largest magnitude kept for current/total; larger values are clamped (JSON-safe, exact)."""
MAX_INT: Final = 10**15
"""``MAX_NUMBER`` as an int: huge ints are clamped without a float conversion (10**400)."""


def set_strict(value: bool) -> None:
    """Re-raise internal errors instead of logging them (tests)."""
    global _strict
    _strict = value


def is_strict() -> bool:
    """Whether internal errors are re-raised."""
    return _strict


def log_once(site: str, message: str, *args: object, level: int = logging.WARNING) -> None:
    """Log ``message`` the first time ``site`` reports, so a hot loop cannot flood the log."""
    with _logged_lock:
        if site in _logged_sites:
            return
        if len(_logged_sites) > 10_000:  # bounded: sites are mostly static strings
            _logged_sites.clear()
        _logged_sites.add(site)
    logger.log(level, message, *args)


def internal_error(site: str, exc: BaseException) -> None:
    """Report an internal error: log it once per site, and re-raise it in strict mode."""
    if _strict:
        logger.error("%s in %s (strict mode: raised)", INTERNAL_ERROR_MARK, site, exc_info=exc)
        raise exc
    with _logged_lock:
        first = site not in _logged_sites
        _logged_sites.add(site)
    if first:
        logger.warning("%s in %s (ignored)", INTERNAL_ERROR_MARK, site, exc_info=exc)


class guard:  # used like a function: ``@guard("site")`` / ``with guard("site"):``
    """The one internal-error guard: a decorator and a context manager.

    An ``Exception`` raised inside is an otel_progress bug or a backend fault: it is logged once
    per site and swallowed (the decorated function returns ``default``), or re-raised in strict
    mode. ``BaseException`` (KeyboardInterrupt, SystemExit) always passes through.
    """

    __slots__ = ("default", "site")

    def __init__(self, site: str, default: Any = None) -> None:
        self.site = site
        self.default = default

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        if exc is None or not isinstance(exc, Exception):
            return False
        internal_error(self.site, exc)
        return True

    def __call__(self, func: Callable[_P, _R]) -> Callable[_P, _R]:
        site, default = self.site, self.default

        @functools.wraps(func)
        def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
            try:
                return func(*args, **kwargs)
            except Exception as exc:
                internal_error(site, exc)
                return default  # type: ignore[no-any-return]

        return wrapper


def in_background(fn: Callable[[], object], name: str) -> Callable[[float], bool]:
    """Start ``fn`` on a daemon thread; ``wait(timeout_s)`` is True if it finished and succeeded.

    For waits that must stay bounded when the callee ignores its own timeout (the SDK's flush and
    shutdown): the caller stops waiting at its deadline, the thread may run on."""
    done, outcome = threading.Event(), []

    def run() -> None:
        try:
            outcome.append(fn() is not False)
        except Exception as exc:  # the callee logs details (the SDK's exporters do)
            logger.warning("otel_progress: %s failed: %r", name, exc)
        finally:
            done.set()

    try:
        threading.Thread(target=run, name=name, daemon=True).start()
    except RuntimeError:  # the interpreter is shutting down: no new threads, run inline
        run()
    return lambda timeout_s: done.wait(max(timeout_s, 0.0)) and outcome == [True]


def safe_str(value: object, limit: int = MAX_MESSAGE) -> str:
    """``str(value)`` that never raises, strips invalid surrogates and is capped at ``limit``."""
    if isinstance(value, str):
        text = value
    else:
        try:
            text = str(value)
        except Exception:
            try:
                text = object.__repr__(value)
            except Exception:  # pragma: no cover - object.__repr__ does not fail in CPython
                text = "<unprintable>"
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    if text.isascii():  # the common case, and much cheaper than an encode round trip
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "replace").decode("utf-8")
    return text


_CLEANED_SIZE: Final = 512
"""Texts :func:`safe_redacted` remembers at most (then it starts over)."""
_CLEANED_TEXT: Final = 256
"""Characters of the longest text :func:`safe_redacted` remembers."""


def safe_redacted(value: object) -> str:
    """``redact(safe_str(value))``: a text as it may leave the process.

    A task repeats its messages and section names: a ``str`` seen lately costs one call and one
    dict lookup (remembered only under a pure redactor, forgotten when the redactor changes)."""
    if value.__class__ is str:
        done = cleaned.get(value)
        if done is not None:
            return done
        fn = redactor()
        done = redact(safe_str(value))
        if len(value) <= _CLEANED_TEXT and (fn is default_redact or fn is None) \
                and redactor() is fn:  # not changed meanwhile (it empties the memo)
            if len(cleaned) >= _CLEANED_SIZE:
                cleaned.clear()
            cleaned[value] = done
        return done
    return redact(safe_str(value))


def exception_text(exc: BaseException) -> str:
    """The exception's message (redacted), even when its ``__str__`` raises."""
    try:
        return redact(safe_str(str(exc)))
    except Exception:
        return f"<unprintable {type(exc).__name__}>"


def exception_class_line(exc: BaseException) -> str:
    """The seed log's error line: ``<class 'ZeroDivisionError'>: division by zero``."""
    return f"{safe_str(type(exc))}: {exception_text(exc)}"


def type_name(exc: BaseException) -> str:
    """Qualified type name for ``error.type`` (builtins stay short: ``ZeroDivisionError``)."""
    cls = type(exc)
    module = getattr(cls, "__module__", "") or ""
    if module in ("builtins", "__main__", ""):
        return cls.__qualname__
    return f"{module}.{cls.__qualname__}"


def format_message(msg: object, args: tuple[object, ...]) -> str:
    """``msg % args`` like logging does: a literal ``%`` without args is kept as is."""
    text = safe_str(msg, MAX_MESSAGE * 4)
    if args:
        try:
            text = text % args
        except Exception:
            text = " ".join([text, *(safe_str(a) for a in args)])
    return safe_str(text)


def as_number(value: object, site: str, owner: object = None) -> float | int | None:
    """A finite number from ``value``, or None (logged once per ``owner``) when it is not one.

    ``bool`` is refused (``True`` is almost always a bug, not 1 item); ``Decimal``/``Fraction``
    and numeric strings are accepted; infinities and NaN are refused; magnitudes are clamped.
    """
    if value is None:
        return None
    cls = value.__class__
    if cls is int:
        num: float | int = value  # type: ignore[assignment]
        if -MAX_INT <= num <= MAX_INT:
            return num
        log_once(f"{site}@{id(owner)}:big", "otel_progress: %s got a huge int: clamped", site)
        return MAX_INT if num > 0 else -MAX_INT
    if cls is bool:
        log_once(f"{site}@{id(owner)}:bool", "otel_progress: %s got a bool, ignored", site)
        return None
    try:
        if isinstance(value, numbers.Integral):
            big = int(value)
            if not -MAX_INT <= big <= MAX_INT:
                return MAX_INT if big > 0 else -MAX_INT
            num = float(big)
        elif isinstance(value, numbers.Real):
            num = float(value)
        elif isinstance(value, str):
            num = float(value.strip())
        else:
            raise TypeError(type(value).__name__)
    except (TypeError, ValueError, OverflowError):
        log_once(f"{site}@{id(owner)}:type", "otel_progress: %s got %r, not a number: ignored",
                 site, safe_str(value, 80))
        return None
    if math.isnan(num):
        log_once(f"{site}@{id(owner)}:nan", "otel_progress: %s got NaN: ignored", site)
        return None
    if math.isinf(num) or abs(num) > MAX_NUMBER:
        log_once(f"{site}@{id(owner)}:inf", "otel_progress: %s got %r: clamped", site, num)
        num = math.copysign(MAX_NUMBER, num)
    if isinstance(num, float) and num.is_integer() and isinstance(value, numbers.Integral):
        return int(num)
    return num


def clamp_percent(value: float) -> float:
    """Clamp to 0..100 (NaN never gets here: :func:`as_number` refuses it)."""
    if value < 0.0:
        return 0.0
    if value > 100.0:
        return 100.0
    return float(value)


AttrValue = str | bool | int | float


def attribute_value(value: object) -> AttrValue | list[str] | list[bool] | list[int] | list[float]:
    """Turn a caller's attribute value into one OTel accepts (others become capped text)."""
    cls = value.__class__
    if cls is str:
        return safe_str(value, MAX_ATTRIBUTE_TEXT)
    if cls is bool or cls is int:
        if cls is int and not (-(2**63) <= value < 2**63):  # type: ignore[operator]
            return safe_str(value, MAX_ATTRIBUTE_TEXT)
        return value  # type: ignore[return-value]
    if cls is float:
        return value  # type: ignore[return-value]
    if isinstance(value, (list, tuple)) and value:
        first = value[0].__class__
        if first in (str, bool, int, float) and all(v.__class__ is first for v in value):
            if first is str:
                return [safe_str(v, MAX_ATTRIBUTE_TEXT) for v in value[:128]]
            return list(value[:128])
    return safe_str(value, MAX_ATTRIBUTE_TEXT)
