"""Keep every test away from the user's caches and weights: both point at fresh temporary folders."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def _isolated_tag2mask_folders(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    base: Path = tmp_path_factory.mktemp("tag2mask_env")
    monkeypatch.setenv("TAG2MASK_CACHE", str(base / "cache"))
    monkeypatch.setenv("TAG2MASK_WEIGHTS", str(base / "weights"))
    yield
