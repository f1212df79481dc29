"""Supported versions of the instrumented library (read by BaseInstrumentor's dependency check)."""

_instruments = ("celery >= 5.3, < 6",)
