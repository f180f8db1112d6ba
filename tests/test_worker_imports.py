"""What a worker process imports at start: the code of the tasks it runs, not every provider's client.

Each module below is loaded by the first task (or request) that uses it; at start it would be
memory in every worker (README.md, Slots, against the targets).
"""

import json
import subprocess
import sys

from tests.processes import ROOT, base_env

# What `manage.py runworker` does before its first task: Django's setup, the system checks, and
# the ASGI application, whose channel routes it serves. Then a link, as a task builds one: the URLconf.
WORKER_START = """
import json, sys
import django
django.setup()
from django.core.management import call_command
call_command("check")
from channels.routing import get_default_application
get_default_application()
loaded = {"start": sorted(sys.modules)}
from django.urls import reverse
reverse("notifications:list")
loaded["urlconf"] = sorted(sys.modules)
print(json.dumps(loaded))
"""
# The SMS and email clients, Pillow, anymail's ESP webhooks (Amazon SES's boto3), Sentry's SDK,
# the sockets' frame validation, the emoji check and phone numbers' metadata (twilio.request_validator,
# which the SMS webhook's view imports, is two small modules).
NOT_AT_START = ("twilio.rest", "twilio.http", "twilio.base", "requests", "anymail.backends", "anymail.webhooks", "PIL",
                "boto3", "botocore", "sentry_sdk", "jsonschema", "regex", "phonenumbers")  # fmt: skip


def imported(modules: list[str], names: tuple[str, ...]) -> list[str]:
    return sorted({name for name in names for module in modules if module == name or module.startswith(name + ".")})


def test_a_worker_starts_without_the_providers_clients_pillow_or_jsonschema():
    # Production's settings (nothing is connected to: ports 1 are never dialled before a task runs).
    env = base_env(DATABASE_URL="postgres://parley@127.0.0.1:1/parley", REDIS_URL="redis://127.0.0.1:1/0",
                   DEBUG="0", SECRET_KEY="test-only")  # fmt: skip
    result = subprocess.run([sys.executable, "-c", WORKER_START], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=120)  # fmt: skip
    assert result.returncode == 0, result.stderr
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert imported(loaded["start"], NOT_AT_START) == []
    # The notifications pages and the webhooks' routes need none of them until a request uses them.
    assert imported(loaded["urlconf"], NOT_AT_START) == []
