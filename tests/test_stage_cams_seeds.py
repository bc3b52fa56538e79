"""The cams and seeds stages on the synthetic dataset with tiny random models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tag2mask.cli import main
from tag2mask.config import load_config
from tag2mask.data import make_synthetic_dataset, open_dataset
from tag2mask.io import load_npz, read_label_png, save_npz
from tag2mask.cam.image import aligned_size, prepare_image
from tag2mask.stages.common import build_prompt_learner, context_path
from tag2mask.stages.rundir import RunDir


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict:
    from tag2mask.models.tiny import tiny_clip, tiny_sam
    from tag2mask.testing import save_openai_state_dict, save_sam_state_dict

    base = tmp_path_factory.mktemp("stages")
    root = make_synthetic_dataset(base / "synthetic", n_train=4, n_val=1, size=(48, 64), seed=2)
    clip = tiny_clip(seed=0, image_size=64)
    save_openai_state_dict(clip, base / "tiny_clip.pt")
    save_sam_state_dict(tiny_sam(seed=0), base / "tiny_sam.pth")
    overrides = [
        f"data.root={root}", f"models.clip={base / 'tiny_clip.pt'}", f"models.sam={base / 'tiny_sam.pth'}",
        f"runtime.cache_dir={base / 'cache'}", "runtime.device=cpu", "superpixels.points_per_side=4",
        "superpixels.pred_iou_thresh=0.0", "superpixels.stability_score_thresh=0.0",
        "superpixels.min_mask_region_area=0",
    ]
    run = base / "run"
    config = load_config("demo", overrides)
    RunDir.create(run, config)
    from tag2mask.models.clip import load_clip

    learner = build_prompt_learner(load_clip(base / "tiny_clip.pt"), config, "cls", open_dataset("synthetic", root, "train").class_names)
    learner.save_context(context_path(run, "cls"))  # what prompt training leaves behind
    return {"base": base, "root": root, "run": run, "overrides": overrides, "config": config}


def test_aligned_size_rounds_each_side_up() -> None:
    assert aligned_size(375, 500, 16) == (384, 512)
    assert aligned_size(224, 288, 16) == (224, 288)
    x = prepare_image(np.zeros((375, 500, 3), np.uint8))
    assert tuple(x.shape) == (1, 3, 384, 512)
    assert float(x[0, 0, 0, 0]) == pytest.approx(-0.48145466 / 0.26862954, rel=1e-6)


def test_text_features_encoded_once_give_the_same_cams(env: dict) -> None:
    import torch

    from tag2mask.cam import GradCAMClip
    from tag2mask.models.clip import load_clip
    from tag2mask.stages.cams import cam_one

    config = env["config"]
    ds = open_dataset("synthetic", env["root"], "train")
    clip = load_clip(env["base"] / "tiny_clip.pt")
    learner = build_prompt_learner(clip, config, "cls", ds.class_names)
    with torch.no_grad():
        learner.ctx.normal_(0, 0.5, generator=torch.Generator().manual_seed(1))  # any trained-looking context
    model = GradCAMClip(clip, learner).eval()
    with torch.no_grad():
        features = model.text_features()
    assert not features.requires_grad
    for image_id in ds.ids[:2]:
        fg = np.asarray(ds[image_id].labels, np.int64)
        each = cam_one(model, ds.load_image(image_id), fg, config, "cls", "cpu")
        once = cam_one(model, ds.load_image(image_id), fg, config, "cls", "cpu", features)
        for key in ("cam_raw", "cam", "logits"):
            np.testing.assert_allclose(once[key], each[key], rtol=1e-6, atol=1e-7)


def test_cams_stage_writes_refined_and_raw_cams(env: dict, capsys: pytest.CaptureFixture[str]) -> None:
    from tag2mask.cam import caa_refine

    run = env["run"]
    assert main(["cams", "--run", str(run), "--task", "cls", "cams.save_att=true"]) == 0
    assert "4/4 labelled images of train" in capsys.readouterr().out
    ds = open_dataset("synthetic", env["root"], "train")
    for image_id in ds.ids:
        z = load_npz(run / "cams_cls" / f"{image_id}.npz")
        assert z["fg_cls"].tolist() == list(ds[image_id].labels)
        assert z["cam"].shape == (len(ds[image_id].labels), 3, 4) and z["cam"].dtype == np.float32
        assert z["size"].tolist() == [48, 64] and z["logits"].shape == (5 + 4,)
        c = env["config"].caa.cls
        expected = caa_refine(z["cam_raw"], z["att"].astype(np.float32), sinkhorn_iters=c.sinkhorn_iters, power=c.power,
                              box_thresh=c.box_thresh, propagate=c.propagate)
        np.testing.assert_allclose(z["cam"], expected, rtol=1e-3, atol=1e-6)  # att was stored in fp16
    rec = RunDir.open(run).stage_record("cams_cls")
    assert rec.status == "done" and rec.counts == {"images": 4, "computed": 4}
    assert main(["cams", "--run", str(run), "--task", "cls", "cams.save_att=true"]) == 0
    assert "0 computed now" in capsys.readouterr().out  # resumed: nothing left to do


def test_cams_without_weights_is_a_clear_error(env: dict, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["cams", "--run", str(env["run"]), "--task", "seg"]) == 2
    err = capsys.readouterr().err
    assert "prompt weights for the seg task not found" in err and "tag2mask train --task seg" in err


def test_external_cams_are_imported(env: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ds = open_dataset("synthetic", env["root"], "train")
    ext = tmp_path / "ext"
    rng = np.random.default_rng(0)
    for image_id in ds.ids:
        p = len(ds[image_id].labels)
        save_npz(ext / f"{image_id}.npz", cam=rng.normal(size=(p, 6, 8)).astype(np.float16),
                 fg_cls=np.array(ds[image_id].labels))
    run = tmp_path / "run"
    assert main(["cams", "--preset", "demo", "--run", str(run), "--task", "seg", "--external", str(ext),
                 *env["overrides"]]) == 0
    z = load_npz(run / "cams_seg" / f"{ds.ids[0]}.npz")
    assert z["cam"].shape[1:] == (6, 8) and z["size"].tolist() == [48, 64]  # no att: CAA cannot run, kept raw
    bad = tmp_path / "bad"
    save_npz(bad / f"{ds.ids[0]}.npz", cam=np.zeros((3, 2, 2), np.float32), fg_cls=np.array([0]))
    assert main(["cams", "--preset", "demo", "--run", str(tmp_path / "run2"), "--task", "seg", "--external",
                 str(bad), *env["overrides"]]) == 2
    assert "P×h×w with P = len(fg_cls) = 1" in capsys.readouterr().err


@pytest.mark.parametrize("method", ["sams", "argmax"])
def test_seeds_stage(env: dict, method: str, capsys: pytest.CaptureFixture[str]) -> None:
    run = env["run"]
    if method == "sams":
        assert main(["superpixels", "--run", str(run)]) == 0
    assert main(["cams", "--run", str(run), "--task", "cls", "cams.save_att=true"]) == 0
    assert main(["seeds", "--run", str(run), "--task", "cls", "cams.save_att=true",
                 f"seeds.coarse.method={method}"]) == 0
    assert "4/4 images of train" in capsys.readouterr().out
    ds = open_dataset("synthetic", env["root"], "train")
    for image_id in ds.ids:
        seed = read_label_png(run / "seeds_coarse" / f"{image_id}.png")
        assert seed.shape == (48, 64)
        assert set(np.unique(seed)) <= {0, *(c + 1 for c in ds[image_id].labels)}


def test_evaluate_stage_reports_protocol_and_sweep(env: dict, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    run = env["run"]
    assert main(["superpixels", "--run", str(run)]) == 0
    assert main(["cams", "--run", str(run), "--task", "cls", "cams.save_att=true"]) == 0
    assert main(["seeds", "--run", str(run), "--task", "cls", "cams.save_att=true"]) == 0
    capsys.readouterr()
    assert main(["evaluate", "--run", str(run), "--task", "cls", "--sweep", "cams.save_att=true"]) == 0
    out = capsys.readouterr().out
    assert "split: train" in out.lower() or "train" in out
    assert "tuned on ground truth of train" in out and "mIoU" in out
    report = json.loads((run / "evaluate" / "seeds_coarse_train.json").read_text())
    assert report["protocol"]["num_images"] == 4 and report["num_classes"] == 6
    assert 0.0 <= report["miou"] <= 1.0 and set(report["argmax_sweep"]["miou"]) == {"1.0", "2.0", "3.0"}
    assert (run / "evaluate" / "seeds_coarse_train.md").read_text().startswith("#")


def test_evaluate_a_folder_without_a_run(env: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tag2mask.io import write_label_png

    ds = open_dataset("synthetic", env["root"], "train")
    for image_id in ds.ids:  # the ground truth itself: mIoU 100
        write_label_png(tmp_path / "pred" / f"{image_id}.png", ds.load_mask(image_id))
    assert main(["evaluate", "--preset", "demo", f"data.root={env['root']}", "--pred", str(tmp_path / "pred")]) == 0
    assert "mIoU 100.00 %" in capsys.readouterr().out
    (tmp_path / "pred" / f"{ds.ids[0]}.png").unlink()
    assert main(["evaluate", "--preset", "demo", f"data.root={env['root']}", "--pred", str(tmp_path / "pred")]) == 2
    assert "is missing" in capsys.readouterr().err
