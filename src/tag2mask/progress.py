"""Progress bars, one style everywhere: lively on a terminal, one line every 30 s in a log file (tqdm, stderr).

A small module of its own so that the training loops (``train/``, ``segmenters/``) need nothing from ``stages/``.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")


def bar_options() -> dict[str, Any]:
    """tqdm options: lively on a terminal, one line every 30 s in a log file."""
    tty = sys.stderr.isatty()
    return {"dynamic_ncols": True, "mininterval": 0.1 if tty else 30.0}


def progress(items: Iterable[T], total: int, desc: str, enabled: bool = True) -> Iterator[T]:
    """A tqdm bar over ``items`` (shown only when ``enabled`` and there is something to do; tqdm writes to
    stderr)."""
    from tqdm import tqdm

    yield from tqdm(items, total=total, desc=desc, unit="img", disable=not enabled or total == 0, **bar_options())


def progress_bar(total: int, desc: str, enabled: bool = True) -> Any:
    """A tqdm bar to ``update`` by hand, as a context manager (work done in batches, counted per image)."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="img", disable=not enabled or total == 0, **bar_options())
