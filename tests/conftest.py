import pytest
from channels.layers import get_channel_layer


@pytest.fixture(autouse=True)
def _media_root(settings, tmp_path):
    """Each test writes uploads into its own folder."""
    settings.MEDIA_ROOT = tmp_path / "media"


@pytest.fixture
async def channel_layer():
    """The configured layer, emptied before the test (Redis outlives tests)."""
    layer = get_channel_layer()
    await layer.flush()
    yield layer
    await layer.flush()
