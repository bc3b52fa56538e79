"""The HTML run report (tag2mask.viz.report) and its figure helpers (tag2mask.viz.figures)."""

from __future__ import annotations

import base64
import html as html_lib
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tag2mask.config import load_config
from tag2mask.data import make_synthetic_dataset
from tag2mask.io import save_npz, voc_palette, write_json, write_label_png, write_text
from tag2mask.stages.common import open_split
from tag2mask.stages.rundir import RunDir
from tag2mask.viz import figures as fig
from tag2mask.viz import report as rep
from tag2mask.viz.report import images as report_images

DATA_IMG = '<img src="data:image/png;base64,'
METRICS = {
    "split": "train",
    "images": 2,
    "all_background": 12.34,
    "seeds_coarse": 45.67,
    "seeds_fine": 56.78,
    "protocol": "split: train\nlabels: synthetic: image labels from masks\nimages: 2",
    "argmax_cls": {"miou": 33.38, "bg_power": 2.0, "tuned_on_ground_truth": "p chosen among [1.0, 2.0, 3.0] by GT "
                   "mIoU on train", "sweep": {"1.0": 30.0, "2.0": 33.38, "3.0": 31.0}},
    "argmax_seg": {"miou": 44.44, "bg_power": 3.0, "tuned_on_ground_truth": "p chosen among [1.0, 2.0, 3.0] by GT "
                   "mIoU on train", "sweep": {"1.0": 40.0, "2.0": 42.0, "3.0": 44.44}},
}
SECONDS = {"superpixels": 12.5, "train_cls": 3.25, "cams_cls": 1.5, "seeds_coarse": 0.25, "train_seg": 4.0,
           "cams_seg": 1.5, "seeds_fine": 0.5}


def _stage(seconds: float, counts: dict[str, int], inputs: dict[str, str] | None = None) -> dict:
    return {"config_hash": "abc123", "status": "done", "inputs": inputs or {"split": "train"}, "counts": counts,
            "seconds": seconds, "started": "2025-01-01T00:00:00+00:00", "finished": "2025-01-01T00:01:00+00:00",
            "versions": {"python": "3.11", "tag2mask": "0.1.0"}}


def _save_ctx(path: Path, shape: tuple[int, ...]) -> None:
    from safetensors.numpy import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"ctx": np.zeros(shape, np.float32)}, str(path))


def _superpixels_of(gt: np.ndarray):
    """Quasi-superpixels from a ground-truth mask: the two image halves (level 1) and each object (level 2)."""
    from tag2mask.superpixels import Superpixels

    h, w = gt.shape
    left = np.zeros((h, w), bool)
    left[:, : w // 2] = True
    masks = [left, ~left] + [gt == v for v in np.unique(gt) if v not in (0, 255)]
    levels = [1, 1] + [2] * (len(masks) - 2)
    return Superpixels.from_masks(np.stack(masks), levels, preset="test")


@pytest.fixture()
def full_run(tmp_path: Path) -> Path:
    """A complete run folder, written by hand: 2 synthetic images, CAMs, seeds, superpixels, contexts, metrics."""
    from tag2mask.stages.evaluate import run_evaluate, write_report

    root = make_synthetic_dataset(tmp_path / "syn", n_train=2, n_val=1, size=(48, 64), seed=0)
    config = load_config("demo", [f"data.root={root}", f"runtime.cache_dir={tmp_path / 'cache'}"])
    run = RunDir.create(tmp_path / "run", config)
    dataset = open_split(config, "train")
    sp_folder = tmp_path / "cache" / "superpixels" / "synthetic-train-test"
    rng = np.random.default_rng(0)
    for image_id in dataset.ids:
        fg = np.asarray(dataset[image_id].labels, np.int64)
        gt = dataset.load_mask(image_id)
        for task in ("cls", "seg"):
            cam = rng.uniform(0.0, 1.0, size=(len(fg), 3, 4)).astype(np.float32)
            save_npz(run.path / f"cams_{task}" / f"{image_id}.npz", cam=cam, cam_raw=cam, fg_cls=fg,
                     size=np.asarray(gt.shape, np.int64))
        write_label_png(run.path / "seeds_coarse" / f"{image_id}.png", np.where(gt == 255, 0, gt))
        write_label_png(run.path / "seeds_fine" / f"{image_id}.png", np.where(gt == 255, 0, gt))
        _superpixels_of(gt).save(sp_folder / image_id)
    _save_ctx(run.path / "train_cls" / "ctx_final.safetensors", (16, 8))  # 128 parameters
    _save_ctx(run.path / "train_seg" / "ctx_final.safetensors", (6, 16, 8))  # 768 parameters
    for task in ("cls", "seg"):
        lines = [f'{{"iter": {i}, "lr": 0.001, "loss": {2.0 / (i + 1):.4f}, "seconds": {i}}}' for i in range(5)]
        write_text(run.path / f"train_{task}" / "metrics.jsonl", "\n".join(lines) + "\n")
    stages = {name: _stage(s, {"images": 2, "computed": 2}) for name, s in SECONDS.items()}
    stages["superpixels"]["inputs"]["folder"] = str(sp_folder)
    stages["train_cls"]["counts"] = stages["train_seg"]["counts"] = {"iterations": 5}
    write_json(run.path / "manifest.json", {"created": "2025-01-01T00:00:00+00:00", "stages": stages})
    write_json(run.path / "metrics.json", METRICS)
    for name in ("seeds_coarse", "seeds_fine"):
        write_report(run_evaluate(config, run.path / name, "train", show_progress=False),
                     run.path / "evaluate" / f"{name}_train")
    return run.path


def _self_contained(html: str) -> bool:
    return re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", html, re.I) is None and "http" not in html


def test_full_report(full_run: Path) -> None:
    path = rep.write_report(full_run)
    assert path == full_run / "report.html"
    html = path.read_text(encoding="utf-8")
    assert html.startswith("<!DOCTYPE html>") and html.rstrip().endswith("</html>")
    assert _self_contained(html)
    assert "<script" not in html
    # seed quality: every mIoU, the margins of the fine seeds, the GT-tuning label, per-class rows
    for number in ("12.3", "45.7", "56.8", "33.4", "44.4"):
        assert f'<td class="num">{number}</td>' in html
    assert "+12.3 points over the argmax seeds of the seg CAMs" in html  # 56.78 - 44.44
    assert "+23.4 points over the argmax seeds of the cls CAMs" in html  # 56.78 - 33.38
    assert "+44.4 points over all-background" in html  # 56.78 - 12.34
    assert "tuned on ground truth" in html and "best bg exponent p=3" in html
    assert "Per-class IoU" in html and "circle" in html
    assert "<h3>Evaluation protocol</h3>" in html and "split: train" in html
    protocol = html.split("<h3>Evaluation protocol</h3>")[1].split("</pre>")[0]
    assert "\nno hyper-parameter was chosen" not in protocol  # said per row, never for the whole table
    assert "coarse and fine seeds: no hyper-parameter was chosen with ground truth" in protocol
    assert "argmax seeds (seg CAMs): tuned on ground truth: p chosen among [1.0, 2.0, 3.0]" in protocol
    assert "all background: nothing to tune" in protocol
    # efficiency: stage names, times, totals, parameters
    for name in SECONDS:
        assert f"<code>{name}</code>" in html
    assert '<td class="num">11.0</td>' in html  # method total without superpixels
    assert '<td class="num">23.5</td>' in html  # total with superpixels
    assert '<td class="num">128</td>' in html and '<td class="num">768</td>' in html
    assert '<td class="num">896</td>' in html  # total learnable parameters
    assert '<td class="num">0.004</td>' in html  # 896 × 4 B = 0.0036 MB at fp32
    # figures: per image 2 (image, GT) + 2 CAMs per tag + outlines + score map + 2 seeds (+ CRF)
    dataset = open_split(load_config(full_run / "config.yaml"), "train")
    crf = 1 if report_images.crf_available() else 0
    expected = sum(2 + 2 * len(s.labels) + 2 + 2 + crf for s in dataset)
    assert html.count(DATA_IMG) == expected
    assert "SAMS score" in html  # the score map came from tag2mask.seeding.sams_scores
    if not crf:
        assert html_lib.escape(rep.CRF_MISSING) in html  # the page escapes the message's quotes
    figures = html.split("<h2>Figures</h2>")[1].split("<h2>Training curves</h2>")[0]
    if not crf:  # the one expected gap: the CRF figure of each image names the missing extra
        figures = figures.replace(f"not available: {html_lib.escape(rep.CRF_MISSING)}", "")
    assert "not available" not in figures
    # every embedded image is a PNG stored at most 384 px wide and shown at least 384 px wide (64 px × 6 here)
    for uri, width, height in re.findall(r'data:image/png;base64,([A-Za-z0-9+/=]+)" width="(\d+)" height="(\d+)"',
                                         html):
        with Image.open(io.BytesIO(base64.b64decode(uri))) as im:
            assert im.format == "PNG" and im.width <= rep.DISPLAY_WIDTH
            assert int(width) == 6 * im.width >= rep.DISPLAY_WIDTH and int(height) == 6 * im.height
    # a colour bar under every heat map (each CAM) and score map (one per image)
    assert html.count('<div class="cbar"') == sum(2 * len(s.labels) + 1 for s in dataset)
    assert html.count("CAM, min-max normalised") == sum(2 * len(s.labels) for s in dataset)
    # examples chosen by the fine seeds' per-image mIoU, labelled, with each seed's mIoU on that image
    assert "best of 2 by fine-seed mIoU (100.0)" in html and "worst of 2 by fine-seed mIoU (100.0)" in html
    assert html.count("mIoU 100.0 on this image</figcaption>") == 4  # coarse and fine seed of both images
    assert "CAL (SPEC §4.2) measures the raw seg-task CAMs" in html and "here it rose" not in html
    # training curves as inline SVG polylines, 5 points each
    polylines = re.findall(r'<polyline[^>]*points="([^"]+)"', html)
    assert len(polylines) == 2 and all(len(p.split()) == 5 for p in polylines)


def test_report_other_path_and_no_crf(full_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(report_images, "crf_available", lambda: False)
    out = rep.write_report(full_run, tmp_path / "elsewhere" / "r.html", n_images=1)
    html = out.read_text(encoding="utf-8")
    assert "dense CRF not installed (pip install -e &#x27;.[crf]&#x27;)" in html
    assert html.count("<div class=\"imgblock\">") == 1
    assert not (full_run / "report.html").exists()


def test_missing_superpixel_folder_and_ground_truth_report(full_run: Path) -> None:
    import json

    manifest = json.loads((full_run / "manifest.json").read_text())
    manifest["stages"]["superpixels"]["inputs"]["folder"] = str(full_run / "no-such-folder")
    (full_run / "manifest.json").write_text(json.dumps(manifest))
    (full_run / "evaluate" / "seeds_fine_train.json").unlink()
    html = rep.write_report(full_run).read_text(encoding="utf-8")
    assert "not available: quasi-superpixel folder" in html
    assert "not available: evaluate/seeds_fine_&lt;split&gt;.json not found" in html
    assert "56.8" in html  # the metrics are still there


def test_partial_run_says_what_is_missing(tmp_path: Path) -> None:
    root = make_synthetic_dataset(tmp_path / "syn", n_train=2, n_val=1, size=(48, 64), seed=0)
    config = load_config("demo", [f"data.root={root}", f"runtime.cache_dir={tmp_path / 'cache'}"])
    run = RunDir.create(tmp_path / "run", config)  # config.yaml + an empty manifest only
    html = rep.write_report(run.path).read_text(encoding="utf-8")
    assert _self_contained(html)
    assert "not available: metrics.json not found" in html
    assert "not available: manifest.json has no stage yet" in html
    assert "not run yet" in html
    assert "not available: train_cls/ctx_final.safetensors" in html
    assert "not available: train_seg/metrics.jsonl" in html
    assert "cams_cls/train_0000.npz (stage cams_cls not run)" in html
    assert "not available: quasi-superpixel folder" in html
    assert html.count(DATA_IMG) == 4  # the image and its ground truth, for both images


def test_report_without_config_or_dataset(tmp_path: Path) -> None:
    config = load_config("demo", [f"data.root={tmp_path / 'missing'}"])
    run = RunDir.create(tmp_path / "run", config)
    html = rep.write_report(run.path).read_text(encoding="utf-8")
    assert "not available: dataset" in html
    (run.path / "config.yaml").unlink()
    html = rep.write_report(run.path).read_text(encoding="utf-8")
    assert "config.yaml not found" in html and "not available: figures need the run&#x27;s config" in html
    with pytest.raises(Exception, match="not a run folder"):
        rep.write_report(tmp_path / "nothing")


def test_superpixel_arrays_match_superpixels_load(full_run: Path) -> None:
    import json

    from tag2mask.superpixels import Superpixels

    manifest = json.loads((full_run / "manifest.json").read_text())
    stem = Path(manifest["stages"]["superpixels"]["inputs"]["folder"]) / "train_0000"
    sp = Superpixels.load(stem)
    light = rep.load_superpixel_arrays(stem)
    assert len(light) == len(sp) >= 3
    assert np.array_equal(light.masks_at(sp.size), sp.masks)
    assert np.array_equal(light.levels, sp.levels)


def test_learnable_parameters_reads_the_header(tmp_path: Path) -> None:
    _save_ctx(tmp_path / "ctx.safetensors", (3, 4, 5))
    n, tensors = rep.learnable_parameters(tmp_path / "ctx.safetensors")
    assert n == 60 and tensors == [("ctx", [3, 4, 5], "F32")]


def test_loss_svg() -> None:
    svg = rep.loss_svg([(0.0, 1.0), (1.0, 0.5), (2.0, 0.0)], "t", width=100, height=60)
    # plot area: x from 48 to 90, y from 18 to 34
    assert 'points="48.0,18.0 69.0,26.0 90.0,34.0"' in svg


# -- figure helpers ------------------------------------------------------------------------------------------------


def test_colorize_and_overlay_exact() -> None:
    pal = voc_palette()
    label = np.array([[0, 1], [2, 255]], np.uint8)
    rgb = fig.colorize_labels(label)
    assert rgb.dtype == np.uint8 and rgb.shape == (2, 2, 3)
    assert rgb[0, 0].tolist() == [0, 0, 0] and rgb[0, 1].tolist() == [128, 0, 0]
    assert rgb[1, 0].tolist() == [0, 128, 0] and rgb[1, 1].tolist() == pal[255].tolist() == [224, 224, 192]
    image = np.full((6, 6, 3), 100, np.uint8)
    big = np.zeros((6, 6), np.uint8)
    big[1:5, 1:5] = 1  # a 4×4 square of class 1 in the middle
    out = fig.overlay(image, big, alpha=0.5)
    assert out[0, 3].tolist() == [0, 0, 0]  # just outside the region: the dark halo
    assert out[0, 0].tolist() == [100, 100, 100]  # background away from any region keeps the image
    assert out[1, 1].tolist() == out[4, 2].tolist() == [128, 0, 0]  # the region's boundary: solid colour
    assert out[2, 2].tolist() == out[3, 3].tolist() == [114, 50, 50]  # inside: (100 + 128) / 2, 100 / 2, 100 / 2
    # on an image of the label's own colour the halo still shows the region
    same = fig.overlay(np.broadcast_to(np.array([128, 0, 0], np.uint8), (6, 6, 3)), big, alpha=0.5)
    assert same[0, 3].tolist() == list(fig.HALO_RGB) != same[1, 3].tolist()
    edges = fig.label_edges(np.array([[0, 0, 1], [0, 0, 1]]))
    assert edges.tolist() == [[False, True, True], [False, True, True]]
    assert fig.heat_css_gradient().startswith("linear-gradient(to right, rgb(0,0,128) 0%, rgb(0,0,255) 12.5%")


def test_heatmap_exact() -> None:
    out = fig.heatmap(np.array([[0.0, 0.125, 0.375], [0.875, 1.0, np.nan]]))
    assert out.tolist() == [[[0, 0, 128], [0, 0, 255], [0, 255, 255]], [[255, 0, 0], [128, 0, 0], [64, 64, 64]]]
    assert fig.heatmap(np.array([[-1.0, 2.0]])).tolist() == [[[0, 0, 128], [128, 0, 0]]]  # clipped


def test_mask_outlines_and_paint() -> None:
    mask = np.zeros((5, 5), bool)
    mask[1:4, 1:4] = True
    out = fig.mask_outlines(mask[None], [1])
    ring = np.zeros((5, 5), bool)
    ring[1:4, 1:4] = True
    ring[2, 2] = False
    assert np.array_equal(out.any(axis=2), ring)
    assert out[1, 1].tolist() == list(fig.LEVEL_RGB[1]) and out[2, 2].tolist() == [0, 0, 0]
    whole = np.ones((5, 5), bool)
    painted = fig.paint_superpixels(np.stack([whole, mask]), [0.25, 0.75], order=[0, 1])
    assert painted[0, 0] == 0.25 and painted[2, 2] == 0.75
    painted = fig.paint_superpixels(np.stack([whole, mask]), [0.25, 0.75], order=[1, 0])
    assert np.all(painted == 0.25)  # the last painter wins
    assert np.isnan(fig.paint_superpixels(mask[None], [1.0])[0, 0])  # no superpixel: NaN
    means = fig.superpixel_means(np.arange(25.0).reshape(5, 5), np.stack([whole, mask, np.zeros((5, 5), bool)]))
    assert means[0] == 12.0 and means[1] == 12.0 and np.isnan(means[2])


def test_resizing() -> None:
    import torch
    import torch.nn.functional as F

    v = np.random.default_rng(0).normal(size=(2, 3, 4))
    ours = fig.resize_bilinear(v, (7, 9))
    ref = F.interpolate(torch.from_numpy(v)[:, None], size=(7, 9), mode="bilinear", align_corners=False)[:, 0]
    assert np.allclose(ours, ref.numpy(), atol=1e-12)
    label = np.array([[1, 2], [3, 4]], np.uint8)
    assert fig.resize_nearest(label, (4, 4)).tolist() == [[1, 1, 2, 2], [1, 1, 2, 2], [3, 3, 4, 4], [3, 3, 4, 4]]
    assert fig.display_size((375, 500)) == (192, 256) and fig.display_size((48, 64)) == (48, 64)
    assert fig.resize_rgb(np.zeros((375, 500, 3), np.uint8), (192, 256)).shape == (192, 256, 3)


def test_tile_and_png_data_uri() -> None:
    a = np.full((2, 1, 3), 10, np.uint8)
    b = np.full((1, 1, 3), 20, np.uint8)
    t = fig.tile([a, b], gap=1)
    assert t.shape == (2, 3, 3)
    assert t[:, 0].tolist() == [[10, 10, 10]] * 2 and t[:, 1].tolist() == [[255, 255, 255]] * 2
    assert t[0, 2].tolist() == [20, 20, 20] and t[1, 2].tolist() == [255, 255, 255]
    for max_colours in (None, 256):  # few colours: stored exactly either way
        uri = fig.png_data_uri(t, max_colours)
        assert uri.startswith("data:image/png;base64,")
        with Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))) as im:
            assert np.array_equal(np.asarray(im.convert("RGB")), t)
    noisy = np.random.default_rng(0).integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
    with Image.open(io.BytesIO(fig.png_bytes(noisy, 256))) as im:  # many colours: quantized to a palette
        assert im.mode == "P"


def test_split_without_ground_truth(tmp_path: Path) -> None:
    import shutil

    root = make_synthetic_dataset(tmp_path / "syn", n_train=2, n_val=1, size=(48, 64), seed=0)
    shutil.rmtree(root / "masks")  # a folder dataset without masks/: tags only
    config = load_config("demo", ["data.dataset=folder", f"data.root={root}", "data.label_source=masks"])
    run = RunDir.create(tmp_path / "run", config)
    html = rep.write_report(run.path, n_images=1).read_text(encoding="utf-8")
    assert "not available: this split has no ground-truth masks" in html
    assert html.count(DATA_IMG) == 1


# -- stage II section ----------------------------------------------------------------------------------------------


def _evaluation(folder: Path, miou: float, split: str = "val", tuned: list[str] | None = None) -> None:
    """``folder/evaluation.{json,md}`` as tag2mask predict / refine write them, with the given mIoU (0..1)."""
    from tag2mask.metrics import ConfusionMatrix, Protocol, evaluation_report
    from tag2mask.stages.evaluate import write_report

    conf = ConfusionMatrix(3).update(np.array([0, 1, 2, 2]), np.array([0, 1, 2, 1]))
    report = evaluation_report(conf, ["background", "a", "b"], Protocol(split, "test", 3, tuned_on_gt=tuned or []))
    report["miou"] = miou
    write_report(report, folder / "evaluation")


@pytest.fixture()
def stage2_run(tmp_path: Path) -> Path:
    """A run folder with one trained stage-II network, its val predictions and their SAMS and CRF refinements."""
    from tag2mask.stages.refine import _alpha_sentence

    config = load_config("demo", [f"data.root={tmp_path / 'no-data'}"])
    run = RunDir.create(tmp_path / "run", config)
    net = run.path / "stage2" / "deeplabv3plus"
    recipe = {"net": "deeplabv3plus", "backbone": "resnet101", "batch_size": 4, "crop_size": 321,
              "optimizer": "sgd", "lr": 0.01, "min_lr": 0.0001, "poly_power": 0.9, "weight_decay": 0.0005,
              "epochs": 120, "max_iter": 20}
    write_json(net / "model.json", {
        "net": "deeplabv3plus", "backbone": "resnet101", "backbone_weights": "resnet101", "num_classes": 3,
        "class_names": ["background", "a", "b"], "dataset": "synthetic", "train_split": "train",
        "labels": str(run.path / "seeds_fine"), "train_images": 7, "total_iterations": 20, "recipe": recipe})
    lines = [f'{{"iter": {i}, "loss": {3.0 / (i + 1):.4f}, "lr": 0.01, "seconds": {i}}}' for i in range(4, 20, 5)]
    write_text(net / "metrics.jsonl", "\n".join(lines) + "\n")
    write_text(net / "val.jsonl", '{"iter": 9, "miou": 31.5}\n{"iter": 19, "miou": 42.25}\n')
    _save_ctx(net / "model.safetensors", (2, 2))
    _save_ctx(net / "checkpoints" / "iter_20.safetensors", (2, 2))
    pred = net / "predictions_val"
    pred.mkdir()
    _evaluation(pred, 0.5)
    sentence = _alpha_sentence([1.0, 2.0, 3.0], "val", 3)
    write_json(pred.parent / "predictions_val_sams" / "refine.json", {
        "stage": "refine", "method": "sams", "alpha": 2.0, "uncovered": "background", "crf_params": None,
        "predictions_dir": str(pred), "superpixels_dir": str(tmp_path / "sp"), "split": "val",
        "alpha_choice": sentence, "tuned_on_gt": [sentence],
        "sweep": [{"alpha": 1.0, "miou": 0.55}, {"alpha": 2.0, "miou": 0.6}, {"alpha": 3.0, "miou": 0.58}],
        "status": "done", "images": 3, "done": 3})
    _evaluation(pred.parent / "predictions_val_sams", 0.6, tuned=[sentence])
    write_json(pred.parent / "predictions_val_crf" / "refine.json", {
        "stage": "refine", "method": "crf", "alpha": None, "uncovered": None, "crf_params": "deeplab_crf",
        "predictions_dir": str(pred), "superpixels_dir": None, "split": "val", "alpha_choice": None,
        "tuned_on_gt": [], "sweep": None, "status": "done", "images": 3, "done": 3})
    _evaluation(pred.parent / "predictions_val_crf", 0.45)
    stage = _stage(123.4, {"images": 7, "iterations": 20})
    write_json(run.path / "manifest.json", {"created": "2025-01-01T00:00:00+00:00",
                                            "stages": {"stage2/deeplabv3plus": stage}})
    return run.path


def _stage2_section(html: str) -> str:
    assert html.index("<h2>Seed quality</h2>") < html.index("<h2>Stage II: segmentation networks</h2>")
    return html.split("<h2>Stage II: segmentation networks</h2>")[1].split("<h2>Efficiency</h2>")[0]


def test_stage2_section(stage2_run: Path) -> None:
    html = rep.write_report(stage2_run, n_images=0).read_text(encoding="utf-8")
    assert _self_contained(html)
    section = _stage2_section(html)
    assert "not available" not in section
    # facts
    for fact in ("deeplabv3plus (folder stage2/deeplabv3plus)", "resnet101", "the run&#x27;s fine seeds",
                 "7 (train)", "20 of 20 (100 %)", "batch 4, crop 321, max_iter 20", "sgd, lr 0.01",
                 "123.4 s (0:02:03", "done; final weights model.safetensors written; 1 checkpoint(s)"):
        assert fact in section, fact
    # results: network alone, then CRF, then SAMS, with the change over the network alone
    rows = re.findall(r"<tr[^>]*>(.*?)</tr>", section.split("<th>result</th>")[1].split("</table>")[0])
    assert [re.findall(r"<code>(.*?)</code>", r)[0] for r in rows] == [
        "predictions_val", "predictions_val_crf", "predictions_val_sams"]
    assert '<td class="num">50.0</td><td class="num"></td>' in rows[0]
    assert '<td class="num">45.0</td><td class="num">-5.0</td>' in rows[1]
    assert '<td class="num">60.0</td><td class="num">+10.0</td>' in rows[2]
    assert "α tuned on val GT (SPEC §13 item 9)" in rows[2] and "α = 2" in rows[2]
    assert "sweep α=1: 55.0, α=2: 60.0, α=3: 58.0" in rows[2] and "not a clean held-out number" in rows[2]
    assert "tuned" not in rows[0] and "tuned" not in rows[1] and "deeplab_crf" in rows[1]
    assert '<tr class="tuned">' in section
    # curves: training loss (4 log lines) and validation mIoU (2 points) as inline SVG
    assert section.count("<svg") == 2
    polylines = re.findall(r'<polyline[^>]*points="([^"]+)"', section)
    assert [len(p.split()) for p in polylines] == [4, 2]
    assert "best 42.2 after 20 iterations" in section  # val.jsonl "iter" is 0-based
    assert '<text x="350" y="160" text-anchor="end">20</text>' in section  # x axis: iterations done


def test_stage2_not_run(tmp_path: Path) -> None:
    config = load_config("demo", [f"data.root={tmp_path / 'no-data'}"])
    run = RunDir.create(tmp_path / "run", config)
    section = _stage2_section(rep.write_report(run.path, n_images=0).read_text(encoding="utf-8"))
    assert "stage II has not run" in section
    assert f"tag2mask train-seg --run {run.path} --net deeplabv3plus" in section
    (run.path / "stage2").mkdir()
    section = _stage2_section(rep.write_report(run.path, n_images=0).read_text(encoding="utf-8"))
    assert "stage2/ holds no network folder yet" in section


def test_stage2_malformed_and_partial(stage2_run: Path) -> None:
    net = stage2_run / "stage2" / "deeplabv3plus"
    write_text(net / "model.json", "{not json")
    write_text(net / "predictions_val_sams" / "evaluation.json", "[1, 2")
    write_text(net / "predictions_val_crf" / "refine.json", "null")
    write_text(net / "val.jsonl", "garbage\n")
    (net / "model.safetensors").unlink()
    (net / "predictions_val" / "evaluation.json").unlink()
    other = stage2_run / "stage2" / "scratch"  # a second network: from scratch, nothing predicted yet
    write_json(other / "model.json", {"net": "deeplabv3plus", "backbone": "resnet18", "backbone_weights": None,
                                      "total_iterations": 10, "recipe": {"batch_size": 2}})
    html = rep.write_report(stage2_run, n_images=0).read_text(encoding="utf-8")
    assert _self_contained(html)
    section = _stage2_section(html)
    assert "model.json unreadable (JSONDecodeError" in section
    assert "evaluation.json unreadable" in section and "refine.json unreadable (not a JSON object)" in section
    assert "not evaluated (no evaluation.json" in section
    assert "val.jsonl holds no finite mIoU yet" in section
    assert "no final weights yet (training unfinished)" in section
    assert "20 of ?" in section  # iterations from the manifest, total unknown without model.json
    # the CRF row still has its mIoU; without a base mIoU there is no change
    assert '<td class="num">45.0</td><td class="num">n/a</td>' in section
    # the second network
    assert "<h3>scratch</h3>" in section and "none (from scratch)" in section
    assert "no prediction folder in stage2/scratch yet" in section
    assert "not in the manifest" in section
    for later in ("<h2>Efficiency</h2>", "<h2>Training curves</h2>"):
        assert later in html


def test_pick_examples_best_median_worst() -> None:
    ids = [f"i{k}" for k in range(9)]
    miou = {f"i{k}": k / 10 for k in range(9)}  # i8 best (0.8), i0 worst
    chosen, how = rep.pick_examples(ids, miou, 3)
    assert [i for i, _ in chosen] == ["i8", "i4", "i0"]
    assert [r.split(" of ")[0] for _, r in chosen] == ["best", "median", "worst"]
    assert chosen[1][1] == "median of 9 by fine-seed mIoU (40.0)" and "best, median and worst" in how
    four, _ = rep.pick_examples(ids, miou, 4)  # evenly spaced, the median included
    assert [i for i, _ in four] == ["i8", "i4", "i3", "i0"]
    assert [i for i, _ in rep.pick_examples(ids, miou, 1)[0]] == ["i4"]  # one example: the typical one
    assert [i for i, _ in rep.pick_examples(ids, miou, 20)[0]] == [f"i{k}" for k in range(8, -1, -1)]
    unscored, how = rep.pick_examples(ids, {}, 2)  # no ground truth: the first images
    assert unscored == [("i0", ""), ("i1", "")] and how.startswith("The first 2 images")
    with_gaps, _ = rep.pick_examples(ids, {"i3": 0.5, "i5": float("nan"), "i6": None}, 3)
    assert with_gaps == [("i3", "median of 1 by fine-seed mIoU (50.0)")]


def test_single_level_superpixels_are_explained(full_run: Path) -> None:
    from tag2mask.superpixels import Superpixels

    manifest = json.loads((full_run / "manifest.json").read_text())
    folder = Path(manifest["stages"]["superpixels"]["inputs"]["folder"])
    for stem in {p.with_suffix("") for p in folder.glob("*.npz")}:
        sp = Superpixels.load(stem)
        Superpixels.from_masks(np.asarray(sp.masks), [2] * len(sp.levels), preset="import").save(stem)
    html = rep.write_report(full_run).read_text(encoding="utf-8")
    assert html.count("SAMS paints every mask in one pass</figcaption>") == 2  # one per image


def test_a_rising_cal_curve_is_explained(full_run: Path) -> None:
    lines = [f'{{"iter": {i}, "lr": 0.001, "loss": {0.1 * (i + 1):.4f}, "seconds": {i}}}' for i in range(5)]
    write_text(full_run / "train_seg" / "metrics.jsonl", "\n".join(lines) + "\n")
    html = rep.write_report(full_run).read_text(encoding="utf-8")
    assert "here it rose, which is not a failure by itself" in html
