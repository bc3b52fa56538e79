"""tag2mask demo: no weights, no downloads, and it must show the method working, not noise."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tag2mask.cli import main


def test_demo_fine_seeds_clearly_beat_argmax_and_all_background(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "fine beats argmax by" in printed and "report.html" in printed
    m = json.loads((out / "metrics.json").read_text())
    best_argmax = max(m["argmax_cls"]["miou"], m["argmax_seg"]["miou"])  # even with its bg exponent tuned on GT
    assert m["seeds_fine"] > best_argmax + 10 and m["seeds_fine"] > m["all_background"] + 40
    assert len(list((out / "seeds_fine").glob("*.png"))) == 48
    html = (out / "report.html").read_text()
    assert "tiny-synthetic" in html and "felzenszwalb" in html and "http://" not in html and "https://" not in html
