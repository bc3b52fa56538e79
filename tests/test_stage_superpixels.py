"""The superpixels stage: cached per (dataset, split, SAM, generator settings), resumable, shardable."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tag2mask.cli import main
from tag2mask.config import load_config
from tag2mask.data import make_synthetic_dataset
from tag2mask.stages.rundir import RunDir
from tag2mask.stages.superpixels import run_superpixels, superpixels_dir
from tag2mask.superpixels import Superpixels


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    from tag2mask.models.tiny import save_sam_state_dict, tiny_sam

    base = tmp_path_factory.mktemp("sp")
    root = make_synthetic_dataset(base / "synthetic", n_train=4, n_val=1, size=(48, 64), seed=5)
    save_sam_state_dict(tiny_sam(seed=0), base / "tiny_sam.pth")
    overrides = [
        f"data.root={root}",
        f"models.sam={base / 'tiny_sam.pth'}",
        f"runtime.cache_dir={base / 'cache'}",
        "runtime.device=cpu",
        "superpixels.points_per_side=4",
        "superpixels.pred_iou_thresh=0.0",  # a random SAM predicts random IoUs: keep its masks
        "superpixels.stability_score_thresh=0.0",
        "superpixels.min_mask_region_area=0",
    ]
    return base, overrides


def test_stage_writes_one_file_pair_per_image_and_resumes(setup: tuple[Path, list[str]]) -> None:
    base, overrides = setup
    config = load_config("demo", overrides)
    first = run_superpixels(config, "train", limit=3, show_progress=False)
    assert first.folder == superpixels_dir(config, "train") and first.folder.parent == base / "cache" / "superpixels"
    assert (first.done, first.total, first.computed) == (3, 3, 3) and first.complete
    for image_id in ("train_0000", "train_0001", "train_0002"):
        sp = Superpixels.load(first.folder / image_id)
        assert sp.size == (48, 64) and len(sp) > 0
        assert set(np.unique(sp.levels)) <= {0, 1, 2}
    again = run_superpixels(config, "train", limit=3, show_progress=False)
    assert again.computed == 0 and again.done == 3  # nothing recomputed


def test_shards_split_the_work(setup: tuple[Path, list[str]]) -> None:
    base, overrides = setup
    config = load_config("demo", [*overrides, "superpixels.points_per_side=3"])
    a = run_superpixels(config, "train", rank=0, world_size=2, show_progress=False)
    assert (a.computed, a.done, a.complete) == (2, 2, False)
    b = run_superpixels(config, "train", rank=1, world_size=2, show_progress=False)
    assert (b.computed, b.done, b.complete) == (2, 4, True)


def test_changed_generator_settings_use_another_folder(setup: tuple[Path, list[str]]) -> None:
    _, overrides = setup
    a = superpixels_dir(load_config("demo", overrides), "train")
    b = superpixels_dir(load_config("demo", [*overrides, "superpixels.box_nms_thresh=0.5"]), "train")
    c = superpixels_dir(load_config("demo", [*overrides, "train.cls.max_iter=50"]), "train")
    assert a != b and a == c  # only what the masks depend on


def test_cli_records_the_stage_in_the_run(setup: tuple[Path, list[str]], capsys: pytest.CaptureFixture[str]) -> None:
    base, overrides = setup
    run_dir = base / "run"
    assert main(["superpixels", "--preset", "demo", "--run", str(run_dir), "--limit", "2", *overrides]) == 0
    assert "2/2 images of train" in capsys.readouterr().out
    rec = RunDir.open(run_dir).stage_record("superpixels_train")
    assert rec.status == "done" and rec.counts["images"] == 2
    assert rec.inputs["folder"] == str(superpixels_dir(load_config("demo", overrides), "train"))
