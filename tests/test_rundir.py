"""Run directory: atomic files, manifest bookkeeping, skip-when-done, resume, stale-result clearing."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from tag2mask.config import load_config
from tag2mask.stages.graph import stage_hashes
from tag2mask.errors import Tag2MaskError
from tag2mask.io import (
    atomic_write,
    load_npz,
    new_file_mode,
    read_json,
    read_label_png,
    save_npz,
    voc_palette,
    write_json,
    write_label_png,
)
from tag2mask.stages.inputs import InputLedger
from tag2mask.stages.rundir import RunDir, shard


def test_atomic_write_leaves_old_file_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "a.json"
    write_json(target, {"v": 1})
    with pytest.raises(RuntimeError):
        with atomic_write(target, "w") as f:
            f.write('{"v": 2')  # half written, then the process "dies"
            raise RuntimeError("killed")
    assert read_json(target) == {"v": 1}
    assert os.listdir(tmp_path) == ["a.json"]  # no temp file left behind


@pytest.mark.parametrize(("umask", "expected"), [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600), (0o000, 0o666)])
def test_written_files_get_the_mode_the_umask_gives(tmp_path: Path, umask: int, expected: int) -> None:
    old = os.umask(umask)
    try:
        assert new_file_mode() == expected
        write_json(tmp_path / "a.json", {"v": 1})  # through a private (0600) temporary file
        save_npz(tmp_path / "b.npz", x=np.zeros(2))
        with atomic_write(tmp_path / "c.bin") as f:
            f.write(b"x")
        (tmp_path / "plain.txt").write_text("x")  # what open() gives a new file under this umask
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir()}
    assert modes == {"a.json": expected, "b.npz": expected, "c.bin": expected, "plain.txt": expected}


def test_npz_round_trip_refuses_objects(tmp_path: Path) -> None:
    save_npz(tmp_path / "x.npz", cam=np.arange(6, dtype=np.float16).reshape(2, 3), fg_cls=np.array([3, 11]))
    z = load_npz(tmp_path / "x.npz")
    assert z["cam"].dtype == np.float16 and z["fg_cls"].tolist() == [3, 11]
    with pytest.raises(TypeError, match="never pickles"):
        save_npz(tmp_path / "y.npz", bad=np.array([{"a": 1}], dtype=object))


def test_label_png_round_trip_with_voc_palette(tmp_path: Path) -> None:
    label = np.zeros((4, 5), np.uint8)
    label[1, 2], label[3, 4], label[0, 0] = 15, 255, 1
    write_label_png(tmp_path / "m.png", label)
    assert np.array_equal(read_label_png(tmp_path / "m.png"), label)
    pal = voc_palette()
    assert pal[1].tolist() == [128, 0, 0] and pal[15].tolist() == [192, 128, 128]  # aeroplane, person
    assert pal[255].tolist() == [224, 224, 192]  # the VOC "ignore" colour


def test_run_records_stages_and_skips_finished_ones(tmp_path: Path) -> None:
    config = load_config("voc")
    h = stage_hashes(config)
    run = RunDir.create(tmp_path / "run", config)
    assert RunDir.open(run.path).config == config
    assert not run.is_done("superpixels", h["superpixels"])
    out = run.begin_stage("superpixels", h["superpixels"], inputs={"split": "train_aug"})
    assert out.is_dir() and read_json(out / "stage.json")["config_hash"] == h["superpixels"]
    assert run.stage_record("superpixels").status == "running"
    run.end_stage("superpixels", counts={"images": 3}, seconds=1.5)
    rec = run.stage_record("superpixels")
    assert rec.status == "done" and rec.counts == {"images": 3} and rec.seconds == 1.5
    assert "torch" in rec.versions and "python" in rec.versions
    assert run.is_done("superpixels", h["superpixels"])
    assert not run.is_done("superpixels", "0" * 12)


def test_interrupted_stage_resumes_and_accumulates_time(tmp_path: Path) -> None:
    run = RunDir.create(tmp_path / "run", load_config("voc"))
    out = run.begin_stage("seeds_fine", "abc")
    ids = ["a", "b", "c", "d"]
    ledger = InputLedger(out, lambda k: [k, "unchanged input"])
    for i in ledger.pending(ids, lambda k: out / f"{k}.png"):
        if i == "c":
            break  # killed here
        write_label_png(out / f"{i}.png", np.zeros((2, 2), np.uint8))
        ledger.record(i)
    run2 = RunDir.create(tmp_path / "run", load_config("voc"))  # the same command again
    out2 = run2.begin_stage("seeds_fine", "abc")
    ledger2 = InputLedger(out2, lambda k: [k, "unchanged input"])
    assert ledger2.pending(ids, lambda k: out2 / f"{k}.png") == ["c", "d"]
    run2.end_stage("seeds_fine", {"images": 4}, seconds=2.0)
    assert run2.stage_record("seeds_fine").seconds == 2.0
    run2.begin_stage("seeds_fine", "abc")  # a later resume keeps the time already spent
    run2.end_stage("seeds_fine", {"images": 4}, seconds=1.0)
    assert run2.stage_record("seeds_fine").seconds == 3.0


def test_changed_config_clears_stale_stage_results(tmp_path: Path) -> None:
    run = RunDir.create(tmp_path / "run", load_config("voc"))
    out = run.begin_stage("seeds_fine", "old")
    (out / "x.png").write_bytes(b"stale")
    out = run.begin_stage("seeds_fine", "new")
    assert not (out / "x.png").exists()
    assert read_json(out / "stage.json")["config_hash"] == "new"


def test_open_rejects_a_non_run(tmp_path: Path) -> None:
    with pytest.raises(Tag2MaskError, match="not a tag2mask run directory"):
        RunDir.open(tmp_path)


def test_shard_partitions_items() -> None:
    items = list(range(10))
    parts = [shard(items, r, 3) for r in range(3)]
    assert parts == [[0, 3, 6, 9], [1, 4, 7], [2, 5, 8]]
    assert sorted(sum(parts, [])) == items
    with pytest.raises(ValueError):
        shard(items, 3, 3)


def test_a_16_bit_label_png_never_wraps_around(tmp_path: Path) -> None:
    from PIL import Image

    from tag2mask.data.base import read_mask_png
    from tag2mask.errors import DataError

    ok = np.array([[0, 1], [20, 255]], np.uint16)
    Image.fromarray(ok).save(tmp_path / "ok.png")
    assert read_label_png(tmp_path / "ok.png").tolist() == [[0, 1], [20, 255]]
    bad = np.array([[0, 257], [1, 2]], np.uint16)  # 257 would wrap to 1, a silent wrong class
    Image.fromarray(bad).save(tmp_path / "bad.png")
    with pytest.raises(DataError, match=r"bad.png.*values \[257\] outside 0..255"):
        read_mask_png(tmp_path / "bad.png")
