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
    from tag2mask.models.tiny import tiny_sam
    from tag2mask.testing import save_sam_state_dict

    base = tmp_path_factory.mktemp("sp")
    root = make_synthetic_dataset(base / "synthetic", n_train=4, n_val=1, size=(48, 64), seed=5)
    save_sam_state_dict(tiny_sam(seed=0), base / "tiny_sam.pth")
    overrides = [
        f"data.root={root}",
        f"models.sam={base / 'tiny_sam.pth'}",
        f"runtime.cache_dir={base / 'cache'}",
        "runtime.device=cpu",
        "superpixels.source=sam",  # these tests are about the SAM source (the demo preset may pick a CPU one)
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
    rec = RunDir.open(run_dir).stage_record("superpixels")
    assert rec.status == "done" and rec.counts["images"] == 2
    assert rec.inputs["folder"] == str(superpixels_dir(load_config("demo", overrides), "train"))


def test_resume_recomputes_only_an_image_killed_before_its_json(
    setup: tuple[Path, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker killed between an image's .npz and its .json (the done marker): the rerun redoes that image only.
    The generator is a counting stand-in (the SAM path itself is covered above)."""
    import tag2mask.stages.superpixels as stage

    _, overrides = setup
    calls: list[int] = []

    class Counting:
        def generate(self, image: np.ndarray) -> Superpixels:
            calls.append(1)
            masks = np.zeros((2, *image.shape[:2]), bool)
            masks[0, :10], masks[1, :, :len(calls)] = True, True  # differs per call
            return Superpixels.from_masks(masks, [2, 1])

    monkeypatch.setattr(stage, "build_generator", lambda config, device: Counting())
    config = load_config("demo", [*overrides, "superpixels.points_per_side=2"])
    first = run_superpixels(config, "train", show_progress=False)
    assert (first.computed, first.done, len(calls)) == (4, 4, 4)
    folder = first.folder
    others = ("train_0000", "train_0002", "train_0003")
    before = {i: (folder / f"{i}.json").stat().st_mtime_ns for i in others}
    (folder / "train_0001.json").unlink()  # only train_0001.npz is left, as after a kill before the JSON
    assert (folder / "train_0001.npz").exists()

    again = run_superpixels(config, "train", show_progress=False)
    assert (again.computed, again.done, again.complete, len(calls)) == (1, 4, True, 5)
    redone = Superpixels.load(folder / "train_0001")  # .npz and .json belong together again
    assert redone.masks[1].sum() == 48 * 5  # from the 5th call
    assert {i: (folder / f"{i}.json").stat().st_mtime_ns for i in others} == before  # the others untouched
    assert run_superpixels(config, "train", show_progress=False).computed == 0 and len(calls) == 5


# ------------------------------------------------------------------------------------------------------------------
# --import: SAM-style annotations made by another tool
# ------------------------------------------------------------------------------------------------------------------


def _gt_masks(config, image_id: str) -> tuple[np.ndarray, list[int]]:
    """Masks for an image from its ground truth: each labelled region (whole) and its left half (part)."""
    from tag2mask.stages.common import open_split

    label = open_split(config, "train").load_mask(image_id)
    masks, levels = [], []
    for value in np.unique(label):
        region = label == value
        masks.append(region)
        levels.append(2)
        half = region.copy()
        half[:, label.shape[1] // 2 :] = False
        if half.any():
            masks.append(half)
            levels.append(1)
    return np.stack(masks), levels


@pytest.fixture(scope="module")
def imported(setup: tuple[Path, list[str]]) -> tuple[Path, list[str], dict]:
    """An annotation folder for the 4 train images in every accepted flavour: compressed RLE list with levels,
    {"annotations": ...} with SAM's uncompressed RLE, no levels, and an amg.py PNG folder."""
    import json

    import torch
    from PIL import Image
    from segment_anything.utils.amg import coco_encode_rle, mask_to_rle_pytorch

    base, overrides = setup
    overrides = [*overrides, "models.sam=/nonexistent/sam.pth"]  # importing never loads SAM
    config = load_config("demo", overrides)
    ann_dir = base / "sam_annotations"
    ann_dir.mkdir()
    truth = {}
    for k, image_id in enumerate(["train_0000", "train_0001", "train_0002", "train_0003"]):
        masks, levels = _gt_masks(config, image_id)
        truth[image_id] = (masks, levels if k != 2 else [2] * len(levels))
        rles = mask_to_rle_pytorch(torch.from_numpy(masks))
        if k == 3:  # amg.py's folder of PNGs (no levels there, so all whole)
            truth[image_id] = (masks, [2] * len(levels))
            (ann_dir / image_id).mkdir()
            rows = ["id,area,bbox_x0,bbox_y0,bbox_w,bbox_h,point_input_x,point_input_y,predicted_iou,"
                    "stability_score,crop_box_x0,crop_box_y0,crop_box_w,crop_box_h"]
            for i, m in enumerate(masks):
                Image.fromarray(m.astype(np.uint8) * 255).save(ann_dir / image_id / f"{i}.png")
                rows.append(f"{i},{int(m.sum())},0,0,0,0,1.0,1.0,0.9,0.95,0,0,64,48")
            (ann_dir / image_id / "metadata.csv").write_text("\n".join(rows))
            continue
        anns = []
        for i, rle in enumerate(rles):
            ann = {"segmentation": coco_encode_rle(rle) if k == 0 else rle, "predicted_iou": 0.9}
            if k != 2:
                ann["level"] = levels[i]
            anns.append(ann)
        (ann_dir / f"{image_id}.json").write_text(json.dumps(anns if k == 0 else {"annotations": anns}))
    return ann_dir, overrides, truth


def test_import_fills_the_cache_like_the_stage(
    imported: tuple[Path, list[str], dict], caplog: pytest.LogCaptureFixture
) -> None:
    import json

    ann_dir, overrides, truth = imported
    config = load_config("demo", overrides)
    with caplog.at_level("INFO", logger="tag2mask"):
        res = run_superpixels(config, "train", import_dir=ann_dir, show_progress=False)
    assert (res.done, res.total, res.computed, res.skipped) == (4, 4, 4, 0) and res.complete
    assert res.folder == superpixels_dir(config, "train", ann_dir) != superpixels_dir(config, "train")
    assert res.folder.parent == superpixels_dir(config, "train").parent  # same cache layout
    assert json.loads((res.folder / "superpixels.json").read_text())["import"] == str(ann_dir.resolve())
    assert "taken as level 2 (whole)" in caplog.text  # train_0002 and the PNG folder had no levels
    for image_id, (masks, levels) in truth.items():
        sp = Superpixels.load(res.folder / image_id)
        np.testing.assert_array_equal(sp.masks, masks)
        assert sp.levels.tolist() == levels and sp.preset == "import"
    # resumable: nothing is redone
    assert run_superpixels(config, "train", import_dir=ann_dir, show_progress=False).computed == 0
    # the key depends on the import folder, not on SAM or the generator settings
    other = load_config("demo", [*overrides, "superpixels.box_nms_thresh=0.5", "models.sam_type=vit_b"])
    assert superpixels_dir(other, "train", ann_dir) == res.folder
    assert superpixels_dir(config, "train", ann_dir.parent) != res.folder


def test_changed_annotations_are_imported_again(imported: tuple[Path, list[str], dict], tmp_path: Path) -> None:
    import json
    import os
    import shutil

    ann_dir, overrides, _ = imported
    ann_dir = shutil.copytree(ann_dir, tmp_path / "annotations")
    config = load_config("demo", overrides)
    assert run_superpixels(config, "train", import_dir=ann_dir, show_progress=False).computed == 4
    later = lambda p: os.utime(p, ns=(0, p.stat().st_mtime_ns + 2_000_000_000))  # noqa: E731
    anns = json.loads((ann_dir / "train_0001.json").read_text())["annotations"]
    (ann_dir / "train_0001.json").write_text(json.dumps({"annotations": anns[:1]}))  # one mask left
    later(ann_dir / "train_0001.json")
    png = sorted((ann_dir / "train_0003").glob("*.png"))[0]  # one PNG of an amg.py folder rewritten in place
    png.write_bytes(png.read_bytes())
    later(png)
    res = run_superpixels(config, "train", import_dir=ann_dir, show_progress=False)
    assert res.computed == 2 and res.complete
    assert Superpixels.load(res.folder / "train_0001").masks.shape[0] == 1


def test_import_shards_split_the_work(imported: tuple[Path, list[str], dict], tmp_path: Path) -> None:
    ann_dir, overrides, _ = imported
    config = load_config("demo", [*overrides, f"runtime.cache_dir={tmp_path}"])
    a = run_superpixels(config, "train", rank=1, world_size=2, import_dir=ann_dir, show_progress=False)
    assert (a.computed, a.done, a.complete) == (2, 2, False)
    b = run_superpixels(config, "train", rank=0, world_size=2, import_dir=ann_dir, show_progress=False)
    assert (b.computed, b.done, b.complete) == (2, 4, True)


def test_import_missing_file_raises_or_skips(imported: tuple[Path, list[str], dict], tmp_path: Path) -> None:
    import shutil

    from tag2mask.errors import DataError

    ann_dir, overrides, _ = imported
    partial = tmp_path / "partial"
    shutil.copytree(ann_dir, partial)
    (partial / "train_0001.json").unlink()
    config = load_config("demo", [*overrides, f"runtime.cache_dir={tmp_path / 'cache'}"])
    with pytest.raises(DataError, match=r"'train_0001'.*partial/train_0001\.json"):
        run_superpixels(config, "train", import_dir=partial, show_progress=False)
    assert not list(superpixels_dir(config, "train", partial).glob("*.npz"))  # checked before any work
    skip = load_config("demo", [*overrides, f"runtime.cache_dir={tmp_path / 'cache'}", "data.on_error=skip"])
    res = run_superpixels(skip, "train", import_dir=partial, show_progress=False)
    assert (res.done, res.total, res.computed, res.skipped, res.complete) == (3, 4, 3, 1, False)
    with pytest.raises(DataError, match="no such folder"):
        run_superpixels(config, "train", import_dir=tmp_path / "nowhere", show_progress=False)


def test_import_size_mismatch_is_a_data_error(imported: tuple[Path, list[str], dict], tmp_path: Path) -> None:
    import json

    from tag2mask.errors import DataError

    ann_dir, overrides, _ = imported
    bad = tmp_path / "bad"
    bad.mkdir()
    for image_id in ("train_0000", "train_0001"):
        anns = [{"segmentation": {"size": [24, 32], "counts": [24 * 32]}}]  # a half-size image's masks
        (bad / f"{image_id}.json").write_text(json.dumps(anns))
    config = load_config("demo", [*overrides, f"runtime.cache_dir={tmp_path}", "data.on_error=skip"])
    with pytest.raises(DataError, match=r"train_0000\.json: annotation 0: mask size \[24, 32\].*\[48, 64\]"):
        run_superpixels(config, "train", import_dir=bad, limit=2, show_progress=False)


def test_imported_superpixels_seed_like_any_other(imported: tuple[Path, list[str], dict]) -> None:
    from tag2mask.seeding import precompute_superpixels, sams_seed

    ann_dir, overrides, truth = imported
    config = load_config("demo", overrides)
    folder = run_superpixels(config, "train", import_dir=ann_dir, show_progress=False).folder
    rng = np.random.default_rng(0)
    for image_id, (masks, levels) in truth.items():
        sp = Superpixels.load(folder / image_id)
        cam = rng.random((2, 12, 16)).astype(np.float32)
        seed = sams_seed(cam, [0, 2], sp.masks, sp.levels, 0.7)
        assert seed.shape == (48, 64) and seed.dtype == np.uint8 and set(np.unique(seed)) <= {0, 1, 3}
        np.testing.assert_array_equal(seed, sams_seed(cam, [0, 2], masks, levels, 0.7))
        np.testing.assert_array_equal(
            seed, sams_seed(cam, [0, 2], None, None, 0.7, precomputed=precompute_superpixels(sp.masks, sp.levels))
        )


def test_cli_import(imported: tuple[Path, list[str], dict], capsys: pytest.CaptureFixture[str]) -> None:
    ann_dir, overrides, _ = imported
    base = ann_dir.parent
    run_dir = base / "run_import"
    assert main(["superpixels", "--preset", "demo", "--run", str(run_dir), "--import", str(ann_dir), *overrides]) == 0
    assert "4/4 images of train" in capsys.readouterr().out
    rec = RunDir.open(run_dir).stage_record("superpixels")
    assert rec.status == "done" and rec.inputs["import"] == str(ann_dir.resolve())
    assert rec.inputs["folder"] == str(superpixels_dir(load_config("demo", overrides), "train", ann_dir))
