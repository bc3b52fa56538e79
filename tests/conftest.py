"""Keep every test away from the user's caches and weights (both point at fresh temporary folders); the demo run
that several test modules read."""

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


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """``tag2mask demo`` run once per session: (run folder, what it printed). Tests may add to the folder
    (e.g. ``stage2/``) but must not change what the demo wrote."""
    import contextlib
    import io

    from tag2mask.cli import main

    out = tmp_path_factory.mktemp("demo") / "demo"
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(["demo", "--out", str(out)]) == 0
    return out, buf.getvalue()
