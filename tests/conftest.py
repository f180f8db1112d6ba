import pytest
from channels.layers import get_channel_layer
from django.core.signals import setting_changed
from django.db import connection
from django.dispatch import receiver

from tasks import backends


@receiver(setting_changed)
def _forget_bell_layers(*, setting: str, **kwargs) -> None:
    """Tests that point CHANNEL_LAYERS elsewhere get bells rung there (as channels resets its own layers)."""
    if setting == "CHANNEL_LAYERS":
        backends._bell_layers.clear()


@pytest.fixture(autouse=True)
def _media_root(settings, tmp_path):
    """Each test writes uploads into its own folder."""
    settings.MEDIA_ROOT = tmp_path / "media"


@pytest.fixture(scope="session", autouse=True)
def _end_lingering_connections(django_db_setup, django_db_blocker):
    """End the test database's other sessions before it is dropped.

    Async tests run their ORM calls on asgiref's executor thread and the
    consumers' own thread pools; those threads outlive the tests, each with a
    persistent connection (DB_CONN_MAX_AGE) that pytest-django never sees, and
    PostgreSQL refuses to drop a database in use.
    """
    yield
    # pytest-django creates the test database only when a selected test uses it
    # (until then NAME is still the configured one, which does not exist here).
    if connection.vendor == "postgresql" and connection.settings_dict["NAME"].startswith("test_"):
        with django_db_blocker.unblock(), connection.cursor() as cursor:
            cursor.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )


@pytest.fixture
async def channel_layer():
    """The layer browsers' sockets use, emptied before the test (Redis outlives tests)."""
    layer = get_channel_layer()
    await layer.flush()
    yield layer
    await layer.flush()


@pytest.fixture
async def task_layer():
    """The layer task bells ring on (CHANNEL_LAYERS["tasks"]), emptied before the test."""
    layer = get_channel_layer("tasks")
    await layer.flush()
    yield layer
    await layer.flush()


@pytest.fixture
def stack(request, postgres_server, redis_server, tmp_path):
    """A fresh database on the session's PostgreSQL and Redis, for real processes.

    Logs of every process are printed when the test fails.
    """
    from tests.processes import Stack

    log_dir = tmp_path / "logs"
    log_dir.mkdir()
    stack = Stack.postgres(postgres_server, redis_server.url, log_dir)
    yield stack
    stack.stop_all()
    if request.node.rep_call.failed if hasattr(request.node, "rep_call") else False:
        print(stack.logs())


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report
