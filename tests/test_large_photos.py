"""Very large photos: the superpixel and CAM stages work at a capped working size (``superpixels.max_side``,
``cams.max_side``), the seeds come out at the image's own size, and changing a cap redoes only the images it
applies to. Peak memory for a 6000×4000 photo at full model size is measured by ``benchmarks/large_photo.py``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tag2mask.cli import main
from tag2mask.data import make_synthetic_dataset
from tag2mask.data.base import fit_image, resize_labels, working_size


@pytest.mark.parametrize(("size", "max_side", "expected"), [
    ((4000, 6000), 1024, (683, 1024)),   # landscape 6000×4000: 4000 * 1024/6000 = 682.67
    ((6000, 4000), 1024, (1024, 683)),   # portrait
    ((375, 500), 1024, (375, 500)),      # VOC: never
    ((480, 640), 1024, (480, 640)),      # COCO: never
    ((1024, 1024), 1024, (1024, 1024)),  # exactly the cap: unchanged
    ((4000, 6000), 0, (4000, 6000)),     # 0: no cap
    ((10, 100000), 64, (1, 64)),         # a sliver keeps at least one pixel
])
def test_working_size(size: tuple[int, int], max_side: int, expected: tuple[int, int]) -> None:
    assert working_size(*size, max_side) == expected


def test_fit_image_and_resize_labels() -> None:
    small = np.full((30, 40, 3), 77, np.uint8)
    assert fit_image(small, 64) is small  # fits: the same array, no copy
    big = np.full((300, 400, 3), (10, 200, 90), np.uint8)
    out = fit_image(big, 64)
    assert out.shape == (48, 64, 3) and out.dtype == np.uint8
    assert (out == (10, 200, 90)).all()  # a flat colour stays exactly that colour
    label = np.array([[1, 2], [3, 4]], np.uint8)
    np.testing.assert_array_equal(resize_labels(label, (4, 6)), np.repeat(np.repeat(label, 2, 0), 3, 1))
    assert resize_labels(label, (2, 2)) is label


@pytest.fixture()
def big_photo_run(tmp_path: Path) -> tuple[Path, list[str]]:
    """The synthetic dataset with train_0001 enlarged 4× (192×256, masks too) and caps of 96 pixels."""
    from tag2mask.models.tiny import tiny_clip
    from tag2mask.testing import save_openai_state_dict

    root = tmp_path / "syn"
    make_synthetic_dataset(root, n_train=4, n_val=1, size=(48, 64), seed=2)
    for folder, resample in (("images", Image.BICUBIC), ("masks", Image.NEAREST)):
        path = root / folder / "train_0001.png"
        with Image.open(path) as im:
            im.load()
            im.resize((256, 192), resample).save(path)
    save_openai_state_dict(tiny_clip(seed=0, image_size=32), tmp_path / "clip.pt")
    overrides = [f"data.root={root}", f"models.clip={tmp_path / 'clip.pt'}", f"runtime.cache_dir={tmp_path / 'c'}",
                 "runtime.device=cpu", "superpixels.source=slic", "superpixels.max_side=96", "cams.max_side=96",
                 "train.cls.max_iter=1", "train.cls.warmup_iter=1", "train.cls.batch_size=2",
                 "train.cls.augment.scale_low=40", "train.cls.augment.scale_high=48",
                 "train.cls.augment.short_thresh=32", "train.cls.augment.crop_size=32"]
    return tmp_path, overrides


def test_a_large_photo_is_worked_at_the_capped_size_and_seeded_at_its_own(
        big_photo_run: tuple[Path, list[str]], capsys: pytest.CaptureFixture[str]) -> None:
    from tag2mask.config import load_config
    from tag2mask.stages.superpixels import superpixels_dir
    from tag2mask.superpixels import Superpixels
    from tag2mask.io import read_label_png

    base, overrides = big_photo_run
    run = ["--run", str(base / "run")]
    assert main(["train", "--task", "cls", "--preset", "demo", *run, *overrides]) == 0
    for args in (["superpixels"], ["cams", "--task", "cls"], ["seeds", "--task", "cls"]):
        assert main([*args, *run]) == 0
    folder = superpixels_dir(load_config("demo", overrides), "train")
    assert Superpixels.load(folder / "train_0001").size == (72, 96)  # 192×256 capped at 96: 72×96
    assert Superpixels.load(folder / "train_0000").size == (48, 64)  # small images as they are
    with np.load(base / "run" / "cams_cls" / "train_0001.npz") as f:
        assert f["size"].tolist() == [192, 256]  # the image's own size is kept
        assert f["cam_raw"].shape[1:] == (5, 6)  # 72×96 aligned to 80×96: a 5×6 patch grid (not 12×16)
    seed = read_label_png(base / "run" / "seeds_coarse" / "train_0001.png")
    assert seed.shape == (192, 256)  # seeded at the working size, enlarged to the image's
    small = resize_labels(seed, (72, 96))  # a nearest enlargement of a 72×96 map: shrinking and enlarging it again
    np.testing.assert_array_equal(resize_labels(small, (192, 256)), seed)  # gives it back exactly
    capsys.readouterr()

    # a cap changed: only the image it applies to is redone, in the stages that use that cap
    assert main(["cams", "--task", "cls", *run, "cams.max_side=0"]) == 0
    assert "(1 computed now" in capsys.readouterr().out
    with np.load(base / "run" / "cams_cls" / "train_0001.npz") as f:
        assert f["cam_raw"].shape[1:] == (12, 16)  # the full 192×256 image: 12×16 patches
    assert main(["superpixels", *run, "superpixels.max_side=128"]) == 0
    assert "(1 computed now" in capsys.readouterr().out
    assert Superpixels.load(folder / "train_0001").size == (96, 128)
    assert main(["seeds", "--task", "cls", *run]) == 0
    assert "(1 computed now" in capsys.readouterr().out  # its CAM and superpixels changed: its seed only
    assert read_label_png(base / "run" / "seeds_coarse" / "train_0001.png").shape == (192, 256)
