"""tests/schedule_settings.py, and the worker stalls inside the transaction of the first tick it enqueues."""

from tests.schedule_settings import *  # noqa: F403
from tests.schedule_settings import INSTALLED_APPS

INSTALLED_APPS = [*INSTALLED_APPS, "tests.scheduled.stall.StallConfig"]
