"""``pipeline: clip_es`` (presets ``*-clip-es``, ``tag2mask demo --training-free``): seeds without prompt training.

The run goes superpixels → CLIP-ES CAMs → seeds → evaluation; its CAM files are :func:`clip_es_cams` of each image
(the one-image API held against CLIP-ES itself), its argmax seeds are CLIP-ES's, and the evaluation reports the
seeds, CLIP-ES's argmax with α tuned on the ground truth (labelled so), and the all-background floor."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tag2mask.cam.clip_es import clip_es_cams, clip_es_highres
from tag2mask.cli import main
from tag2mask.config import load_config
from tag2mask.io import load_npz, read_label_png
from tag2mask.seeding import argmax_seed
from tag2mask.stages.pipeline import STEPS_TRAINING_FREE, final_seeds, needs_superpixels


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    import contextlib
    import io

    base = tmp_path_factory.mktemp("free")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main(["run", "--preset", "demo-clip-es", "--run-dir", str(base / "run"), f"data.root={base / 'data'}"])
    assert code == 0
    return base, printed.getvalue()


def test_presets_say_what_they_are() -> None:
    voc, coco, demo = (load_config(f"{n}-clip-es") for n in ("voc", "coco", "demo"))
    assert voc.pipeline == coco.pipeline == demo.pipeline == "clip_es" and load_config("voc").pipeline == "fma"
    assert voc.data.train_split == voc.data.eval_split == "train"  # CLIP-ES's VOC protocol: train, 1,464 images
    assert voc.clip_es.box_thresh == 0.4 and coco.clip_es.box_thresh == 0.7
    assert voc.clip_es.templates == ["a clean origami {}."] and len(voc.data.bg_names) == 25
    assert len(coco.data.bg_names) == 23 and "keyboard" not in coco.data.bg_names
    assert final_seeds(voc) == "seeds_clip_es" and final_seeds(load_config("voc")) == "seeds_fine"
    assert needs_superpixels(voc) and not needs_superpixels(load_config("voc-clip-es", ["seeds.coarse.method=argmax"]))


def test_the_run_trains_nothing_and_reports_all_seeds(run: tuple[Path, str]) -> None:
    base, printed = run
    folder = base / "run"
    assert not (folder / "train_cls").exists() and not (folder / "train_seg").exists()
    assert all(f"[{i}/{len(STEPS_TRAINING_FREE)}]" in printed for i in range(1, 5))
    m = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
    assert m["pipeline"] == "clip_es" and m["seed_method"] == "sams" and m["images"] == 48
    assert "tuned on GT" in printed and "alpha chosen among [1.0, 2.0] by GT mIoU on train" in json.dumps(m)
    # measured: CLIP-ES + SAMS 78.8, CLIP-ES argmax 47.6, all background 14.1 (the trained demo: fine 83.3)
    assert m["seeds_clip_es"] > m["argmax_clip_es"]["miou"] + 20 > m["all_background"] + 40, m
    assert (folder / "evaluate" / "seeds_clip_es_train.md").is_file()
    assert "Training-free seed mIoU" in (folder / "report.html").read_text(encoding="utf-8")


def test_cam_files_are_clip_es_cams_of_the_image(run: tuple[Path, str]) -> None:
    from tag2mask.data import open_dataset
    from tag2mask.models.clip import load_clip

    base, _ = run
    config = load_config("demo-clip-es", [f"data.root={base / 'data'}"])
    dataset = open_dataset("synthetic", base / "data", "train")
    clip = load_clip(config.models.clip)
    for image_id in dataset.ids[:3]:
        z = load_npz(base / "run" / "cams_clip_es" / f"{image_id}.npz")
        fg = list(dataset[image_id].labels)
        names = [config.data.fg_names[k] for k in fg]
        ref = clip_es_cams(clip, dataset.load_image(image_id), names, list(config.data.bg_names),
                           templates=config.clip_es.templates)
        assert z["fg_cls"].tolist() == fg and tuple(z["size"]) == dataset.load_image(image_id).shape[:2]
        # the stage encodes every class's prompt once and masks the softmax; the one-image call encodes the image's
        scale = np.abs(ref["cam_refined"]).max()
        assert np.abs(z["cam"] - ref["cam_refined"]).max() <= 1e-5 * scale
        assert np.abs(z["cam_raw"] - ref["cam_raw"]).max() <= 1e-5 * np.abs(ref["cam_raw"]).max()


def test_argmax_seeds_are_clip_es_own_and_a_rerun_skips(run: tuple[Path, str], capsys: pytest.CaptureFixture[str]
                                                        ) -> None:
    base, _ = run
    folder = base / "run"
    assert main(["run", "--run-dir", str(folder), "seeds.coarse.method=argmax", "clip_es.bg_power=2"]) == 0
    printed = capsys.readouterr().out
    assert "superpixels: not needed" in printed and "cams_clip_es: done earlier, skipped" in printed
    path = next(iter(sorted((folder / "cams_clip_es").glob("*.npz"))))
    z = load_npz(path)
    size = tuple(int(v) for v in z["size"])
    expected = argmax_seed(clip_es_highres(z["cam"], size), z["fg_cls"], size, 2.0, normalise=False)
    np.testing.assert_array_equal(read_label_png(folder / "seeds_clip_es" / f"{path.stem}.png"), expected)
    m = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
    assert m["seed_method"] == "argmax" and "CLIP-ES argmax (alpha 2)" in printed


def test_demo_training_free_beside_the_trained_demo(demo_run: tuple[Path, str], tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    import shutil

    folder = tmp_path / "demo"  # a copy: the session's demo folder stays as the demo wrote it
    shutil.copytree(demo_run[0], folder)
    assert main(["demo", "--out", str(folder), "--training-free"]) == 0
    printed = capsys.readouterr().out
    assert "training-free seed mIoU on the synthetic ground truth: CLIP-ES + SAMS" in printed
    assert "the trained demo's fine seeds" in printed and "83.3" in printed
    assert (folder / "training-free" / "seeds_clip_es").is_dir() and not (folder / "training-free" / "train_cls").exists()
    # the trained demo's report now shows each image's training-free CAMs beside its cls and seg CAMs
    report = (folder / "report.html").read_text(encoding="utf-8")
    assert report.count("training-free CAM (CLIP-ES): ") == report.count("seg CAM: ") > 0
    free = (folder / "training-free" / "report.html").read_text(encoding="utf-8")
    assert "training-free CAM (CLIP-ES): " in free and "seg CAM: " not in free and "training-free SAMS seed" in free


def test_trained_stage_commands_refuse_a_training_free_config(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    for command in ("train", "cams", "seeds"):
        code = main([command, "--preset", "demo-clip-es", "--task", "cls", "--run-dir", str(tmp_path / command)])
        assert code == 2 and "training-free" in capsys.readouterr().err and not (tmp_path / command).exists()
    from tag2mask.stages.graph import stage_hashes

    assert list(stage_hashes(load_config("demo-clip-es"))) == ["superpixels", "cams_clip_es", "seeds_clip_es"]


def test_crf_seeds_of_training_free_cams_use_clip_es_maps(monkeypatch: pytest.MonkeyPatch) -> None:
    # CLIP-ES's CRF: the dense CRF on its high-resolution maps with bg = 1 − max fg (α = 1), whatever
    # seeds.coarse.bg_power says (the CRF backend itself is an optional extra, tested in test_crf.py)
    import tag2mask.seeding.crf as crf
    from tag2mask.stages.seeds import seed_one

    seen = {}

    def fake_crf_seed(image, cam, fg, bg_power, params):  # noqa: ANN001, ANN202
        seen.update(cam=cam, fg=list(fg), bg_power=bg_power, params=params)
        return np.zeros(image.shape[:2], np.uint8)

    monkeypatch.setattr(crf, "crf_seed", fake_crf_seed)
    settings = load_config("demo-clip-es", ["seeds.coarse.method=crf", "seeds.coarse.bg_power=0.6"]).seeds.coarse
    cam = np.random.default_rng(0).random((2, 3, 4)).astype(np.float32)
    cam_file = {"cam": cam, "fg_cls": np.array([1, 3])}
    image = np.zeros((24, 32, 3), np.uint8)
    seed_one(cam_file, (24, 32), settings, None, image, clip_es_alpha=2.0)
    assert seen["bg_power"] == 1.0 and seen["fg"] == [1, 3] and seen["params"] == settings.crf
    np.testing.assert_array_equal(seen["cam"], clip_es_highres(cam, (24, 32)).astype(np.float32))
    seed_one(cam_file, (24, 32), settings, None, image)  # FMA's CRF seeds: the CAM itself, the setting's power
    assert seen["bg_power"] == 0.6 and seen["cam"] is cam
