"""Parley's settings without CONN_HEALTH_CHECKS, to measure that one change in bench/fanout.py.

With health checks on, Django pings PostgreSQL before the first query of each
database_sync_to_async call: one more round trip per chat message and per
presence heartbeat, on the one thread that does a daphne's database work.
"""

from project.settings import *  # noqa: F403

DATABASES["default"]["CONN_HEALTH_CHECKS"] = False  # noqa: F405
