"""The full-size dress rehearsal on 2 images (benchmarks/full_size.py): the voc preset with a random full-size
CLIP ViT-B/16 on 500×375 VOC-layout images runs every stage, and the outputs have the real shapes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "full_size.py"


def test_two_images_at_full_size_have_the_real_shapes(tmp_path: Path) -> None:
    from tag2mask.io import read_label_png

    keep = tmp_path / "full"
    r = subprocess.run([sys.executable, str(SCRIPT), "--images", "2", "--iterations", "1", "--sam-images", "0",
                        "--state-dict", "--keep", str(keep), "--extra", "cams.save_att=true"],
                       capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    for stage in ("superpixels", "train_cls", "cams_cls", "seeds_coarse", "train_seg", "cams_seg", "seeds_fine"):
        assert f"| {stage} |" in r.stdout, stage
    assert "VOC train_aug: 10,582 images" in r.stdout and "COCO train: 82,081 images" in r.stdout
    run = keep / "run"
    ids = (keep / "VOC2012" / "ImageSets" / "SegmentationAug" / "train_aug.txt").read_text().split()
    assert len(ids) == 2
    for task in ("cls", "seg"):
        assert (run / f"train_{task}" / "ctx_final.safetensors").is_file()
        for image_id in ids:
            with np.load(run / f"cams_{task}" / f"{image_id}.npz") as f:
                assert f["size"].tolist() == [375, 500]
                p = len(f["fg_cls"])
                assert p >= 1 and f["cam"].shape == f["cam_raw"].shape == (p, 24, 32)  # 384×512 / 16
                assert f["att"].shape == (768, 768)  # (h·w)² merged attention of the 24×32 grid
                assert f["logits"].shape == (20 + 25,)  # VOC's 20 classes + the preset's 25 background names
    for folder in ("seeds_coarse", "seeds_fine"):
        for image_id in ids:
            assert read_label_png(run / folder / f"{image_id}.png").shape == (375, 500)
    sp = next((keep / "cache" / "superpixels").glob("voc-train_aug-*"))
    assert json.loads((sp / f"{ids[0]}.json").read_text())["size"] == [375, 500]
    assert json.loads((run / "metrics.json").read_text())["images"] == 2
