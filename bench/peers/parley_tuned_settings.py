"""Parley's settings with what bench/fanout.py found worth changing: the pub/sub layer, no per-call health check.

CONN_HEALTH_CHECKS makes Django ping PostgreSQL ("SELECT 1") before the first
query of every database_sync_to_async call, i.e. once per chat message and per
presence heartbeat, on the one thread that does all of a daphne's database work.
"""

from project.settings import *  # noqa: F403

from bench.peers.parley_pubsub_settings import CHANNEL_LAYERS  # noqa: F401

DATABASES["default"]["CONN_HEALTH_CHECKS"] = False  # noqa: F405
