from __future__ import annotations

import pytest

from lightir import registry


@pytest.fixture
def throwaway_passes():
    """Names registered inside a test are removed after it."""
    before = set(registry.all_passes()) | set(registry.all_pipelines())
    yield
    after = set(registry.all_passes()) | set(registry.all_pipelines())
    for name in after - before:
        registry.unregister(name)
