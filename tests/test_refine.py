"""The refine stage: SAMS refinement / dense CRF of a network's probabilities (SPEC §11.2, §8.1, §13 items 9, 16)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tag2mask.config import load_config
from tag2mask.data import make_synthetic_dataset, open_dataset
from tag2mask.errors import ConfigError, Tag2MaskError
from tag2mask.segmenters.predictions import save_prediction
from tag2mask.stages.refine import REFINE_JSON, SPEC_ALPHA_SWEEPS, refine_one, run_refine, tuned_on_gt_lines
from tag2mask.io import read_label_png

SP_WARN = "ignore:__array__ implementation:DeprecationWarning"  # pycocotools on numpy 2


def _has_crf() -> bool:
    try:
        import pydensecrf.densecrf  # noqa: F401
    except ImportError:
        return False
    return True


needs_crf = pytest.mark.skipif(not _has_crf(), reason="pydensecrf2 (extra 'crf') is not installed")


def _cols(h: int, w: int, spans: list[tuple[int, int]]) -> np.ndarray:
    """An S×h×w mask stack, mask k = columns [a, b) of every row."""
    masks = np.zeros((len(spans), h, w), bool)
    for k, (a, b) in enumerate(spans):
        masks[k, :, a:b] = True
    return masks


# ----------------------------------------------------------------------------------------------------------------
# refine_one, SAMS


def test_sams_alpha_changes_the_winner_of_a_superpixel() -> None:
    # channel 0 background, channel 1 class 3 (label 4); superpixel A = columns 0-2, B = columns 3-5
    bg = np.array([0.7, 0.5, 0.3, 0.2, 0.2, 0.2], np.float32)  # A: mean 0.5
    cl = np.array([0.2, 0.4, 0.6, 0.8, 0.8, 0.8], np.float32)  # A: mean 0.4
    prob = np.stack([np.tile(bg, (2, 1)), np.tile(cl, (2, 1))])
    masks, levels = _cols(2, 6, [(0, 3), (3, 6)]), [1, 1]
    # alpha 1: A 0.5 > 0.4 -> background over the whole superpixel (the per-pixel argmax would say 0, 0, 4)
    expected1 = np.tile(np.array([0, 0, 0, 4, 4, 4], np.uint8), (2, 1))
    got1 = refine_one(prob, [3], "sams", alpha=1.0, superpixels=masks, levels=levels)
    np.testing.assert_array_equal(got1, expected1)
    assert got1.dtype == np.uint8
    # alpha 2: A 0.5^2 = 0.25 < 0.4 -> class 3 everywhere
    expected2 = np.full((2, 6), 4, np.uint8)
    np.testing.assert_array_equal(refine_one(prob, [3], "sams", alpha=2.0, superpixels=masks, levels=levels),
                                  expected2)


def test_sams_maps_rows_to_their_classes() -> None:
    # two classes, 2 and 4 (labels 3 and 5); three superpixels, one per winner
    prob = np.zeros((3, 1, 6), np.float32)
    prob[:, 0, 0:2] = [[0.8], [0.1], [0.1]]
    prob[:, 0, 2:4] = [[0.1], [0.8], [0.1]]
    prob[:, 0, 4:6] = [[0.1], [0.2], [0.7]]
    got = refine_one(prob, np.array([2, 4]), "sams", superpixels=_cols(1, 6, [(0, 2), (2, 4), (4, 6)]),
                     levels=[0, 0, 0])
    np.testing.assert_array_equal(got, [[0, 0, 3, 3, 5, 5]])


def test_superpixels_at_a_large_photos_working_size() -> None:
    # probabilities at 4×12, superpixels at the 2×6 working size: refined there, the labels enlarged by 2
    prob = np.zeros((2, 4, 12), np.float32)
    prob[0, :, :6], prob[1, :, :6] = 0.8, 0.2  # left half background, right half class 1 (label 2)
    prob[0, :, 6:], prob[1, :, 6:] = 0.1, 0.9
    got = refine_one(prob, [1], "sams", superpixels=_cols(2, 6, [(0, 3), (3, 6)]), levels=[1, 1])
    assert got.shape == (4, 12)
    np.testing.assert_array_equal(got, np.tile(np.repeat([0, 2], 6).astype(np.uint8), (4, 1)))
    with pytest.raises(ValueError, match="superpixels are"):  # not that photo's working size: another aspect
        refine_one(prob, [1], "sams", superpixels=_cols(3, 6, [(0, 3), (3, 6)]), levels=[1, 1])


def _priority_case() -> tuple[np.ndarray, np.ndarray]:
    # columns 0-2 confidently class 0 (label 1), columns 3-5 background
    prob = np.zeros((2, 1, 6), np.float32)
    prob[0, 0] = [0.1, 0.1, 0.1, 0.9, 0.9, 0.95]
    prob[1, 0] = [0.9, 0.9, 0.9, 0.1, 0.1, 0.05]
    # mask 0: whole image (mean bg 0.5167 > class 0.4833 -> background, confidence 0.5167)
    # mask 1: columns 0-2 (class 0, confidence 0.9)
    return prob, _cols(1, 6, [(0, 6), (0, 3)])


def test_sams_priority_whole_level_beats_part_level_then_confidence() -> None:
    prob, masks = _priority_case()
    # whole (level 2) over part (level 1): the whole is painted last despite its lower confidence
    np.testing.assert_array_equal(refine_one(prob, [0], "sams", superpixels=masks, levels=[2, 1]),
                                  [[0, 0, 0, 0, 0, 0]])
    # the same masks at one level: the higher confidence (the part, 0.9 > 0.5167) wins the overlap
    np.testing.assert_array_equal(refine_one(prob, [0], "sams", superpixels=masks, levels=[1, 1]),
                                  [[1, 1, 1, 0, 0, 0]])
    # levels swapped: the part (level 2) wins its pixels
    np.testing.assert_array_equal(refine_one(prob, [0], "sams", superpixels=masks, levels=[1, 2]),
                                  [[1, 1, 1, 0, 0, 0]])


@pytest.mark.filterwarnings(SP_WARN)
def test_sams_with_a_superpixels_object_and_uncovered_modes() -> None:
    from tag2mask.superpixels import Superpixels

    # one superpixel over columns 0-3 (background wins it); columns 4, 5 are uncovered: the network says class 1
    prob = np.zeros((2, 2, 6), np.float32)
    prob[0] = [0.9, 0.8, 0.7, 0.6, 0.3, 0.6]
    prob[1] = [0.1, 0.2, 0.3, 0.4, 0.7, 0.4]
    sp = Superpixels.from_masks(_cols(2, 6, [(0, 4)]), [2])
    bg = refine_one(prob, [1], "sams", superpixels=sp)
    np.testing.assert_array_equal(bg, np.zeros((2, 6), np.uint8))  # uncovered -> background (reference)
    keep = refine_one(prob, [1], "sams", superpixels=sp, uncovered="argmax")
    # uncovered -> the network's own argmax: column 4 class 1 (label 2), column 5 background
    np.testing.assert_array_equal(keep, np.tile(np.array([0, 0, 0, 0, 2, 0], np.uint8), (2, 1)))
    # superpixel mean bg 0.75 vs class 0.25: alpha 6 gives 0.75^6 = 0.178 < 0.25, the class wins it; alpha is
    # not applied to the uncovered pixels' argmax, so column 5 (bg 0.6 vs 0.4) stays background
    keep3 = refine_one(prob, [1], "sams", alpha=6.0, superpixels=sp, uncovered="argmax")
    np.testing.assert_array_equal(keep3, np.tile(np.array([2, 2, 2, 2, 2, 0], np.uint8), (2, 1)))


def test_no_foreground_class_gives_all_background() -> None:
    prob = np.ones((1, 3, 4), np.float32)
    assert not refine_one(prob, [], "sams").any()  # no superpixels needed
    assert refine_one(prob, np.zeros(0, np.int64), "crf").shape == (3, 4)


def test_refine_one_rejects_bad_inputs() -> None:
    prob = np.full((2, 2, 3), 0.5, np.float32)
    with pytest.raises(ValueError, match="method"):
        refine_one(prob, [0], "vote")
    with pytest.raises(ValueError, match="1\\+P"):
        refine_one(prob, [0, 1], "sams", superpixels=_cols(2, 3, [(0, 3)]), levels=[2])
    with pytest.raises(ValueError, match="superpixels"):
        refine_one(prob, [0], "sams")
    with pytest.raises(ValueError, match="superpixels are"):
        refine_one(prob, [0], "sams", superpixels=_cols(2, 4, [(0, 3)]), levels=[2])
    with pytest.raises(ValueError, match="image"):
        refine_one(prob, [0], "crf")


# ----------------------------------------------------------------------------------------------------------------
# refine_one, dense CRF


def _two_region_image(h: int = 12, w: int = 16) -> np.ndarray:
    image = np.zeros((h, w, 3), np.uint8)
    image[:, : w // 2] = (30, 40, 50)
    image[:, w // 2 :] = (220, 200, 180)
    return image


@needs_crf
def test_crf_keeps_confident_labels_and_pulls_an_uncertain_pixel() -> None:
    image = _two_region_image()
    h, w = image.shape[:2]
    prob = np.zeros((2, h, w), np.float32)
    prob[0, :, : w // 2], prob[1, :, : w // 2] = 0.95, 0.05
    prob[0, :, w // 2 :], prob[1, :, w // 2 :] = 0.05, 0.95
    expected = np.zeros((h, w), np.uint8)
    expected[:, w // 2 :] = 7  # class 6
    np.testing.assert_array_equal(refine_one(prob, [6], "crf", image=image), expected)
    # one uncertain pixel inside the class region leaning to background: its neighbours pull it to the class
    prob[:, 6, 12] = [0.55, 0.45]
    assert refine_one(prob, [6], "crf", image=image)[6, 12] == 7
    np.testing.assert_array_equal(refine_one(prob, [6], "crf", image=image, crf="clip_es_crf,no_pp"), expected)


# ----------------------------------------------------------------------------------------------------------------
# run_refine on the synthetic dataset


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict:
    from tag2mask.stages.superpixels import run_superpixels

    base = tmp_path_factory.mktemp("refine")
    root = make_synthetic_dataset(base / "synthetic", n_train=1, n_val=4, size=(48, 64), seed=3)
    overrides = [f"data.root={root}", f"runtime.cache_dir={base / 'cache'}", "runtime.device=cpu"]
    config = load_config("demo", overrides)  # superpixels.source: felzenszwalb (CPU)
    sp = run_superpixels(config, "val", show_progress=False)
    assert sp.complete
    # predictions made from the ground truth, with the background over-predicted inside objects so that alpha
    # matters: background pixels bg 0.7 / each class of the image 0.2; pixels of class c bg 0.85 / c 0.65 / other
    # classes 0.2; plus uniform noise of ±0.03. SAMS: alpha 1, 2 lose the objects (0.85^2 > 0.65), alpha 3, 4 are
    # right (0.85^3 < 0.65 and 0.7^4 > 0.2), alpha 5 paints the background (0.7^5 < 0.2).
    ds = open_dataset("synthetic", root, "val")
    rng = np.random.default_rng(0)
    preds = base / "preds"
    for image_id in ds.ids:
        gt = ds.load_mask(image_id)
        gt = np.where(gt == 255, 0, gt)
        fg = np.unique(gt[gt > 0]).astype(np.int64) - 1
        prob = np.empty((1 + fg.size, *gt.shape), np.float32)
        prob[0] = np.where(gt == 0, 0.7, 0.85)
        for k, c in enumerate(fg, start=1):
            prob[k] = np.where(gt == c + 1, 0.65, 0.2)
        prob += rng.uniform(-0.03, 0.03, prob.shape).astype(np.float32)
        save_prediction(preds / f"{image_id}.npz", prob, fg)
    return {"base": base, "root": root, "config": config, "overrides": overrides, "preds": preds, "ids": ds.ids,
            "sp_dir": sp.folder}


def test_fixed_alpha_writes_every_png_and_resumes(env: dict, tmp_path: Path) -> None:
    out = tmp_path / "refined"
    res = run_refine(env["config"], env["preds"], out, method="sams", split="val", alpha=2.0, show_progress=False)
    assert (res.done, res.total, res.computed, res.complete) == (4, 4, 4, True)
    assert res.alpha == 2.0 and res.sweep is None and res.out_dir == out and res.method == "sams"
    for image_id in env["ids"]:
        label = read_label_png(out / f"{image_id}.png")
        assert label.shape == (48, 64)
    record = json.loads((out / REFINE_JSON).read_text())
    assert record["method"] == "sams" and record["alpha"] == 2.0 and record["uncovered"] == "background"
    assert record["split"] == "val" and record["predictions_dir"] == str(env["preds"].resolve())
    assert record["superpixels_dir"] == str(Path(env["sp_dir"]).resolve()) and record["crf_params"] is None
    assert record["tuned_on_gt"] == [] and record["sweep"] is None and "not tuned" in record["alpha_choice"]
    assert record["status"] == "done" and (record["images"], record["done"]) == (4, 4)
    assert tuned_on_gt_lines(out) == []

    # resume: delete one PNG; only it is recomputed, with identical bytes
    victim = out / f"{env['ids'][1]}.png"
    before = victim.read_bytes()
    others = {p.name: p.stat().st_mtime_ns for p in out.glob("*.png") if p != victim}
    victim.unlink()
    again = run_refine(env["config"], env["preds"], out, method="sams", split="val", alpha=2.0, show_progress=False)
    assert (again.computed, again.done) == (1, 4) and victim.read_bytes() == before
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.png") if p != victim} == others

    # other settings into the same folder: refused (PNGs of two alphas never mix)
    with pytest.raises(Tag2MaskError, match="other settings"):
        run_refine(env["config"], env["preds"], out, method="sams", split="val", alpha=3.0, show_progress=False)

    # shards: two workers share the split
    sharded = tmp_path / "sharded"
    a = run_refine(env["config"], env["preds"], sharded, method="sams", split="val", alpha=2.0, rank=0,
                   world_size=2, show_progress=False)
    assert (a.computed, a.done, a.complete) == (2, 2, False)
    b = run_refine(env["config"], env["preds"], sharded, method="sams", split="val", alpha=2.0, rank=1,
                   world_size=2, show_progress=False)
    assert (b.computed, b.done, b.complete) == (2, 4, True)
    for image_id in env["ids"]:
        assert (sharded / f"{image_id}.png").read_bytes() == (out / f"{image_id}.png").read_bytes()


def test_sweep_picks_the_best_alpha_and_is_labelled_as_tuned_on_gt(env: dict, tmp_path: Path) -> None:
    from tag2mask.stages.evaluate import run_evaluate

    out = tmp_path / "swept"
    sweep = (1.0, 2.0, 3.0, 4.0, 5.0)
    res = run_refine(env["config"], env["preds"], out, method="sams", split="val", sweep=sweep, show_progress=False)
    assert res.sweep is not None and list(res.sweep) == list(sweep)
    table = res.sweep
    best = max(sweep, key=lambda a: (table[a], -sweep.index(a)))  # ties -> the first listed
    assert res.alpha == best and res.complete
    assert table[best] > max(table[1.0], table[5.0])  # the sweep matters on these predictions
    record = json.loads((out / REFINE_JSON).read_text())
    assert record["alpha"] == best
    assert [row["alpha"] for row in record["sweep"]] == list(sweep)
    assert [row["miou"] for row in record["sweep"]] == pytest.approx([table[a] for a in sweep])
    sentence = record["alpha_choice"]
    assert "tuned on the ground truth of split val" in sentence and "1, 2, 3, 4, 5" in sentence
    assert record["tuned_on_gt"] == [sentence] and tuned_on_gt_lines(out) == [sentence]
    # the written PNGs are those of the best alpha: their mIoU is the table's best value
    report = run_evaluate(env["config"], out, "val", tuned_on_gt=tuned_on_gt_lines(out), show_progress=False)
    assert report["miou"] == pytest.approx(table[best])
    assert sentence in report["protocol"]["tuned_on_gt"]
    # and equal to a fixed-alpha run with that alpha
    fixed = tmp_path / "fixed"
    run_refine(env["config"], env["preds"], fixed, method="sams", split="val", alpha=best, show_progress=False)
    for image_id in env["ids"]:
        assert (fixed / f"{image_id}.png").read_bytes() == (out / f"{image_id}.png").read_bytes()
    # a rerun of the sweep resumes (same alpha): nothing recomputed
    assert run_refine(env["config"], env["preds"], out, method="sams", split="val", sweep=sweep,
                      show_progress=False).computed == 0
    # the sweep listed in another order: the same table, ties go to the first listed
    backwards = tuple(reversed(sweep))
    res2 = run_refine(env["config"], env["preds"], tmp_path / "backwards", method="sams", split="val",
                      sweep=backwards, show_progress=False)
    assert res2.sweep == pytest.approx(table)
    assert res2.alpha == max(backwards, key=lambda a: (table[a], -backwards.index(a)))


def test_spec_alpha_sweeps() -> None:
    assert SPEC_ALPHA_SWEEPS["voc"] == (1, 2, 3, 4, 5)
    assert SPEC_ALPHA_SWEEPS["coco"] == pytest.approx((0.6, 0.7, 0.8, 0.9, 1.0))


def test_uncovered_argmax_and_superpixels_dir_option(env: dict, tmp_path: Path) -> None:
    out = tmp_path / "keep"
    res = run_refine(env["config"], env["preds"], out, method="sams", split="val", uncovered="argmax",
                     superpixels_dir=env["sp_dir"], limit=2, show_progress=False)
    assert (res.done, res.total, res.alpha) == (2, 2, 1.0)
    assert json.loads((out / REFINE_JSON).read_text())["uncovered"] == "argmax"


@needs_crf
def test_crf_method_end_to_end(env: dict, tmp_path: Path) -> None:
    out = tmp_path / "crf"
    res = run_refine(env["config"], env["preds"], out, method="crf", split="val", limit=2, show_progress=False)
    assert res.complete and res.alpha is None and res.sweep is None
    record = json.loads((out / REFINE_JSON).read_text())
    assert record["method"] == "crf" and record["crf_params"] == "deeplab_crf" and record["alpha"] is None
    assert record["superpixels_dir"] is None and record["tuned_on_gt"] == []
    assert read_label_png(out / f"{env['ids'][0]}.png").shape == (48, 64)
    with pytest.raises(ConfigError, match="SAMS"):
        run_refine(env["config"], env["preds"], out, method="crf", split="val", alpha=2.0, show_progress=False)
    with pytest.raises(ConfigError, match="CRF parameter set"):
        run_refine(env["config"], env["preds"], tmp_path / "x", method="crf", split="val", crf_params="nope",
                   show_progress=False)


def test_errors_are_one_clear_tag2mask_error(env: dict, tmp_path: Path) -> None:
    config = env["config"]
    # a missing prediction file is named, with the command that makes it
    partial = tmp_path / "partial"
    shutil.copytree(env["preds"], partial)
    (partial / f"{env['ids'][2]}.npz").unlink()
    with pytest.raises(Tag2MaskError, match=f"{env['ids'][2]}.npz is missing.*tag2mask predict"):
        run_refine(config, partial, tmp_path / "o1", method="sams", split="val", alpha=1.0, show_progress=False)
    with pytest.raises(Tag2MaskError, match=f"{env['ids'][2]}.npz is missing"):
        run_refine(config, partial, tmp_path / "o2", method="sams", split="val", sweep=[1, 2], show_progress=False)
    # no prediction at all: one error for the folder
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(Tag2MaskError, match="no prediction file .* of split 'val'.*tag2mask predict"):
        run_refine(config, empty, tmp_path / "o3", method="sams", split="val", alpha=1.0, show_progress=False)
    # a sweep needs ground truth: a copy of the dataset without masks
    nogt = tmp_path / "nogt"
    shutil.copytree(env["root"], nogt)
    shutil.rmtree(nogt / "masks")
    nogt_config = load_config("demo", [*env["overrides"], f"data.root={nogt}"])
    with pytest.raises(Tag2MaskError, match="no ground-truth masks.*sweep"):
        run_refine(nogt_config, env["preds"], tmp_path / "o4", method="sams", split="val", sweep=[1, 2],
                   superpixels_dir=env["sp_dir"], show_progress=False)
    # (a fixed alpha needs no ground truth)
    assert run_refine(nogt_config, env["preds"], tmp_path / "o5", method="sams", split="val", alpha=1.0,
                      superpixels_dir=env["sp_dir"], limit=1, show_progress=False).complete
    # alpha and sweep together
    with pytest.raises(ConfigError, match="not both"):
        run_refine(config, env["preds"], tmp_path / "o6", method="sams", split="val", alpha=1.0, sweep=[1, 2],
                   show_progress=False)
    with pytest.raises(ConfigError, match="duplicates"):
        run_refine(config, env["preds"], tmp_path / "o6", method="sams", split="val", sweep=[1, 1],
                   show_progress=False)
    with pytest.raises(ConfigError, match="positive"):
        run_refine(config, env["preds"], tmp_path / "o6", method="sams", split="val", alpha=0.0,
                   show_progress=False)
    # superpixels of the split not in the cache: the folder and the command are named
    other = load_config("demo", [*env["overrides"], "superpixels.source=slic"])
    with pytest.raises(Tag2MaskError, match=r"no quasi-superpixels of split 'val'.*tag2mask superpixels --run RUN "
                                            r"--split val"):
        run_refine(other, env["preds"], tmp_path / "o7", method="sams", split="val", alpha=1.0, show_progress=False)
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o3").exists()  # nothing written on an error
