import pytest
from channels.layers import get_channel_layer


@pytest.fixture(autouse=True)
def _media_root(settings, tmp_path):
    """Each test writes uploads into its own folder."""
    settings.MEDIA_ROOT = tmp_path / "media"


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
