"""Drop-ins for the progress libraries people already use: change the import, keep the code.

``otel_progress.compat.celery_progress``: celery-progress's ``ProgressRecorder``, ``Progress`` and
``GroupProgress``, recording spans and coalescing writes through otel_progress's flusher.
"""

__all__: list[str] = []
