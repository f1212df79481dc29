"""The Celery settings the test apps share (``tests/apps/*_app.py``).

JSON only, so what a test reads from Redis is what a frontend would; one task prefetched per
child, so a test that kills or revokes a task knows which child holds it; no retry warning
while the broker starts.
"""

from __future__ import annotations

from typing import Any, Final

TEST_APP_CONF: Final[dict[str, Any]] = {
    "task_serializer": "json",
    "result_serializer": "json",
    "accept_content": ["json"],
    "result_accept_content": ["json"],
    "broker_connection_retry_on_startup": True,
    "worker_prefetch_multiplier": 1,
}
