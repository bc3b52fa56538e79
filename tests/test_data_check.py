"""Bad data is found before any work: `raise` stops with one line naming the file, `skip` leaves the samples out
of every stage and says which and why (manifest, report, console); the check is cached per file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tag2mask.cli import main
from tag2mask.data import make_synthetic_dataset, open_dataset
from tag2mask.data import check as data_check
from tag2mask.errors import DataError

QUICK = ["data.dataset=folder", "train.cls.batch_size=2", "train.seg.batch_size=2", "train.cls.max_iter=2",
         "train.seg.max_iter=2", "train.cls.warmup_iter=1", "train.seg.warmup_iter=1"]


@pytest.fixture()
def broken(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A folder dataset of 8 images, three of them bad: a truncated image, a mask of another size, and a 16-bit
    mask holding 257 (which an 8-bit cast would silently turn into class 1)."""
    root = make_synthetic_dataset(tmp_path / "shapes", n_train=8, n_val=1, size=(48, 64))
    image = root / "images" / "train_0002.png"
    image.write_bytes(image.read_bytes()[:200])
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(root / "masks" / "train_0004.png")
    wide = np.asarray(Image.open(root / "masks" / "train_0006.png")).astype(np.uint16)
    wide[0, 0] = 257
    Image.fromarray(wide).save(root / "masks" / "train_0006.png")
    return root, {"train_0002": "train_0002.png: cannot read image", "train_0004": "differs from image size",
                  "train_0006": "values [257] outside 0..255"}


def test_raise_stops_before_any_stage_naming_the_file(broken: tuple[Path, dict[str, str]], tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    root, bad = broken
    run_dir = tmp_path / "run"
    assert main(["run", "--preset", "demo", "--run-dir", str(run_dir), f"data.root={root}", *QUICK]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(err) == 1 and bad["train_0002"] in err[0] and "2 more bad sample(s); data.on_error=skip" in err[0]
    assert not run_dir.exists()  # nothing was started


def test_skip_leaves_the_bad_samples_out_of_every_stage(broken: tuple[Path, dict[str, str]], tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    root, bad = broken
    run_dir = tmp_path / "run"
    assert main(["run", "--preset", "demo", "--run-dir", str(run_dir), f"data.root={root}", "data.on_error=skip",
                 *QUICK]) == 0
    out = capsys.readouterr().out
    assert "data check: 3 bad sample(s) of train left out (data.on_error=skip)" in out
    good = {f"train_{i:04d}" for i in range(8)} - set(bad)
    for stage in ("seeds_coarse", "seeds_fine"):
        assert {p.stem for p in (run_dir / stage).glob("*.png")} == good
    assert {p.stem for p in (run_dir / "cams_seg").glob("*.npz")} == good
    manifest = json.loads((run_dir / "manifest.json").read_text())
    skipped = dict(manifest["data_check"]["skipped"])
    assert set(skipped) == set(bad) and all(bad[k] in skipped[k] for k in bad)
    html = (run_dir / "report.html").read_text()
    assert "3 sample(s) of train left out (data.on_error=skip)" in html
    assert all(f"<code>{k}</code>" in html for k in bad)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["images"] == 5  # the evaluation counts the images that were used


def test_the_check_is_cached_per_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = make_synthetic_dataset(tmp_path / "shapes", n_train=4, n_val=1, size=(48, 64))
    calls: list[str] = []
    real = data_check._check_one

    def counting(dataset, image_id):  # noqa: ANN001, ANN202
        calls.append(image_id)
        return real(dataset, image_id)

    monkeypatch.setattr(data_check, "_check_one", counting)
    ds = lambda: open_dataset("folder", root, "train")  # noqa: E731
    assert data_check.check_split(ds(), tmp_path / "cache") == {} and len(calls) == 4
    assert data_check.check_split(ds(), tmp_path / "cache") == {} and len(calls) == 4  # all from the cache
    image = root / "images" / "train_0001.png"
    image.write_bytes(b"not an image any more")  # replaced in place: checked again, alone
    problems = data_check.check_split(ds(), tmp_path / "cache")
    assert list(problems) == ["train_0001"] and calls[4:] == ["train_0001"]
    with pytest.raises(DataError, match=r"train_0001.png: cannot read image"):
        data_check.apply_check(ds(), "raise", tmp_path / "cache")
    kept = data_check.apply_check(ds(), "skip", tmp_path / "cache")
    assert kept.ids == ["train_0000", "train_0002", "train_0003"] and kept.skipped[0][0] == "train_0001"
