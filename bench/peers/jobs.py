"""The no-op task of bench/tasks.py, for Parley and for django-tasks-db alike.

One `django.tasks` function: which backend runs it is a matter of settings
(project.settings for Parley, bench.peers.dtdb_settings for django-tasks-db).
"""

import time

from django.tasks import task


@task
def noop(enqueued_at: float = 0.0) -> float:
    """Nothing but the time it started, so the benchmark can compare it with `enqueued_at`."""
    return time.time()
