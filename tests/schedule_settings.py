"""Parley's settings plus tests.scheduled, an app declaring a schedule every second (tests/test_e2e_schedules.py)."""

from project.settings import *  # noqa: F403
from project.settings import INSTALLED_APPS

INSTALLED_APPS = [*INSTALLED_APPS, "tests.scheduled"]
