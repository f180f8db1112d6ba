"""Settings of a worker an end-to-end test is about to kill: it dawdles exactly where the test kills it.

Parley's own code has no pauses for tests. A test starts the worker it means to
kill with DJANGO_SETTINGS_MODULE=tests.e2e_settings (Stack.runworker(settings=...)),
and the worker that takes over with the plain project settings.
"""

from project.settings import *  # noqa: F403
from project.settings import INSTALLED_APPS, STORAGES

# Each thumbnail file written costs 2 s more: the test kills the worker between two files.
STORAGES = {**STORAGES, "default": {"BACKEND": "tests.dawdle.SlowFileSystemStorage", "OPTIONS": {"delay": 2.0}}}
# A delivery's attempt stops once SENDING is committed, before it is marked in flight and sent.
INSTALLED_APPS = [*INSTALLED_APPS, "tests.dawdle.DawdleConfig"]
