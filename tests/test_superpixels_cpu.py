"""CPU quasi-superpixels (scikit-image Felzenszwalb / SLIC) and the superpixels stage with a CPU source."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("skimage")

from tag2mask.config import load_config  # noqa: E402
from tag2mask.data import make_synthetic_dataset  # noqa: E402
from tag2mask.superpixels import CpuSuperpixelGenerator, Superpixels, hierarchy_filter  # noqa: E402
from tag2mask.superpixels.cpu import (  # noqa: E402
    DEFAULTS,
    boundary_fraction,
    cpu_params,
    level_masks,
    merge_segments,
)

METHODS = ("felzenszwalb", "slic")


def _rectangles(noise: float = 0.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two flat coloured rectangles on a flat grey background (48×64), optionally with Gaussian noise; and the
    region map (0 background, 1 red, 2 blue)."""
    img = np.full((48, 64, 3), 120.0)
    regions = np.zeros((48, 64), np.int64)
    img[8:24, 6:26], regions[8:24, 6:26] = (200, 40, 40), 1
    img[20:40, 36:58], regions[20:40, 36:58] = (40, 60, 210), 2
    if noise:
        img += np.random.default_rng(seed).normal(0.0, noise, img.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), regions


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_synthetic_dataset(tmp_path_factory.mktemp("cpu_sp") / "syn", n_train=3, n_val=1, size=(48, 64),
                                  seed=3)


@pytest.fixture(scope="module")
def demo_image(synthetic: Path) -> np.ndarray:
    from tag2mask.data import open_dataset

    ds = open_dataset("synthetic", synthetic, "train")
    return ds.load_image(ds.ids[0])


# ------------------------------------------------------------------------------------------------------------------
# the generator


def test_felzenszwalb_level2_recovers_flat_regions_exactly() -> None:
    """Tolerance: none. Flat regions with sharp edges give exactly one whole per region (the 1-px strips that
    Felzenszwalb's pre-smoothing leaves along the edges are merged back into the side their colour came from)."""
    img, regions = _rectangles()
    sp = CpuSuperpixelGenerator("felzenszwalb").generate(img)
    wholes = sp.masks[sp.levels == 2]
    assert len(wholes) == 3
    expected = {(regions == r).tobytes() for r in range(3)}
    assert {m.tobytes() for m in wholes} == expected
    fine, medium, coarse = CpuSuperpixelGenerator("felzenszwalb").segment(img)
    for labels in (fine, medium, coarse):  # every level: the three regions
        assert int(labels.max()) + 1 == 3


def test_slic_level2_segments_tile_the_flat_regions() -> None:
    """SLIC splits regions into compact superpixels; tolerance: none — every level-2 segment lies inside one
    region, so each region is exactly a union of wholes."""
    img, regions = _rectangles()
    sp = CpuSuperpixelGenerator("slic").generate(img)
    wholes = sp.masks[sp.levels == 2]
    assert 3 <= len(wholes) <= 60
    for m in wholes:
        assert len(np.unique(regions[m])) == 1
    np.testing.assert_array_equal(wholes.sum(axis=0), 1)  # a partition


@pytest.mark.parametrize(("method", "tolerance"), [("felzenszwalb", 0.0), ("slic", 0.05)])
def test_noisy_regions_are_recovered_nearly(method: str, tolerance: float) -> None:
    """With per-pixel noise (σ = 6 grey levels, as the demo's textures) the majority label of each whole
    reproduces the regions on all pixels (Felzenszwalb; measured: 100 % for noise seeds 0-3) or all but 5 % of
    them (SLIC, whose compact superpixels cut the corners; measured: 96.7-99.3 %)."""
    img, regions = _rectangles(noise=6.0)
    sp = CpuSuperpixelGenerator(method).generate(img)
    wholes = sp.masks[sp.levels == 2]
    pred = np.zeros_like(regions)
    for m in wholes:
        pred[m] = np.bincount(regions[m], minlength=3).argmax()
    assert (pred == regions).mean() >= 1.0 - tolerance


@pytest.mark.parametrize("method", METHODS)
def test_output_is_a_superpixels_with_levels_in_order(method: str, demo_image: np.ndarray) -> None:
    gen = CpuSuperpixelGenerator(method)
    sp = gen.generate(demo_image)
    assert isinstance(sp, Superpixels) and sp.size == (48, 64)
    assert set(np.unique(sp.levels)) <= {0, 1, 2} and (sp.levels == 2).sum() >= 2
    assert np.all(np.diff(sp.levels) <= 0)  # wholes, then parts, then subparts
    assert sp.preset == method and sp.config_hash == gen.config_hash
    assert np.isnan(sp.predicted_iou).all() and np.isnan(sp.stability_score).all()
    np.testing.assert_array_equal(sp.masks[sp.levels == 2].sum(axis=0), 1)  # the wholes tile the image


@pytest.mark.parametrize("method", METHODS)
def test_output_is_deterministic(method: str, demo_image: np.ndarray) -> None:
    a = CpuSuperpixelGenerator(method).generate(demo_image)
    b = CpuSuperpixelGenerator(method).generate(demo_image.copy())
    c = CpuSuperpixelGenerator(method).generate(demo_image)
    for other in (b, c):
        assert other.rle_counts == a.rle_counts
        np.testing.assert_array_equal(other.levels, a.levels)
        np.testing.assert_array_equal(other.atoms, a.atoms)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("thresh", [0.3, 0.6])
def test_hierarchy_filter_is_applied(method: str, thresh: float, demo_image: np.ndarray) -> None:
    everything = CpuSuperpixelGenerator(method, recall_thresh=None).generate(demo_image)
    fine, medium, coarse = CpuSuperpixelGenerator(method).segment(demo_image)
    n = [int(labels.max()) + 1 for labels in (fine, medium, coarse)]
    assert np.bincount(everything.levels, minlength=3).tolist() == n  # no filter: every segment of every level

    sp = CpuSuperpixelGenerator(method, recall_thresh=thresh).generate(demo_image)
    masks, levels = sp.masks, sp.levels
    assert len(sp) < len(everything)  # the filter dropped parts / subparts
    # no accepted part or subpart has recall >= thresh in a kept mask of a higher level
    for k in np.flatnonzero(levels < 2):
        higher = masks[levels > levels[k]]
        recall = (higher & masks[k]).sum(axis=(1, 2)) / masks[k].sum()
        assert recall.max() < thresh
    # and it is exactly hierarchy_filter on the unfiltered output
    keep = hierarchy_filter(everything.masks, everything.levels, thresh)
    np.testing.assert_array_equal(masks, everything.masks[keep])
    np.testing.assert_array_equal(levels, everything.levels[keep])


@pytest.mark.parametrize("method", METHODS)
def test_level_masks_equals_the_filter_on_the_full_stack(method: str, demo_image: np.ndarray) -> None:
    fine, medium, coarse = CpuSuperpixelGenerator(method).segment(demo_image)
    full = np.concatenate([lab[None] == np.arange(int(lab.max()) + 1)[:, None, None] for lab in (coarse, medium, fine)])
    full_levels = np.repeat([2, 1, 0], [int(lab.max()) + 1 for lab in (coarse, medium, fine)])
    for thresh in (0.3, 0.5, 0.9, None):
        masks, levels = level_masks(coarse, medium, fine, thresh)
        keep = np.arange(len(full)) if thresh is None else hierarchy_filter(full, full_levels, thresh)
        np.testing.assert_array_equal(masks, full[keep])
        np.testing.assert_array_equal(levels, full_levels[keep])


@pytest.mark.parametrize("method", METHODS)
def test_no_tiny_or_thin_segments(method: str, demo_image: np.ndarray) -> None:
    gen = CpuSuperpixelGenerator(method)
    min_size = max(2, round(DEFAULTS[method]["min_size"] * np.sqrt(48 * 64 / (96 * 128))))
    for labels in gen.segment(demo_image):
        assert np.bincount(labels.reshape(-1)).min() >= min_size
        assert boundary_fraction(labels).max() <= DEFAULTS[method]["max_boundary_fraction"]
    fine, medium, coarse = gen.segment(demo_image)
    assert int(fine.max()) > int(medium.max()) > int(coarse.max())  # fine -> coarse


def test_merge_segments_merges_tiny_and_thin_segments_by_colour() -> None:
    labels = np.zeros((10, 12), np.int64)
    labels[:, 6:] = 1
    labels[:, 5] = 2  # a 1-px strip between the halves, coloured like the right half
    labels[0, 0] = 3  # a single pixel in the left half
    image = np.zeros((10, 12, 3))
    image[:, 5:] = 1.0
    out = merge_segments(labels, image, min_size=4)
    expected = np.zeros((10, 12), np.int64)
    expected[:, 5:] = 1
    np.testing.assert_array_equal(out, expected)
    # without colours: the longest border decides (the strip borders both halves over 10 px; ties -> lower label)
    np.testing.assert_array_equal(merge_segments(labels, None, min_size=4)[:, 5], 0)
    # nothing to merge: only renumbered in raster order
    renumbered = np.array([1, 3, 2, 0])[labels]  # the pixel (0, 0) first, then the left half, strip, right half
    np.testing.assert_array_equal(merge_segments(labels, image, min_size=1, max_boundary_fraction=None), renumbered)
    assert merge_segments(np.zeros((3, 3), np.int64), None, min_size=100).max() == 0  # one segment stays


def test_parameters_are_checked_and_resolved() -> None:
    p = cpu_params("felzenszwalb", [1, 2, 3], recall_thresh=None, min_size=7)
    assert p["scales"] == [1.0, 2.0, 3.0] and p["min_size"] == 7 and p["recall_thresh"] is None
    assert p["method"] == "felzenszwalb" and "version" in p
    assert cpu_params("slic")["compactness"] == DEFAULTS["slic"]["compactness"]
    with pytest.raises(ValueError, match="unknown CPU superpixel method"):
        cpu_params("watershed")
    with pytest.raises(ValueError, match="3 positive values"):
        cpu_params("slic", [100, 50])
    with pytest.raises(ValueError, match="unknown felzenszwalb parameter"):
        cpu_params("felzenszwalb", compactness=3)
    assert CpuSuperpixelGenerator("slic", [50, 20, 10]).config_hash != CpuSuperpixelGenerator("slic").config_hash


def test_grey_and_tiny_images() -> None:
    grey = np.tile(np.arange(16, dtype=np.uint8)[None] * 16, (12, 1))
    for method in METHODS:
        sp = CpuSuperpixelGenerator(method).generate(grey)
        assert sp.size == (12, 16) and len(sp) >= 1
        np.testing.assert_array_equal(sp.masks[sp.levels == 2].sum(axis=0), 1)


# ------------------------------------------------------------------------------------------------------------------
# the stage


def _overrides(root: Path, cache: Path) -> list[str]:
    return [f"data.root={root}", f"runtime.cache_dir={cache}", "runtime.device=cpu",
            "models.sam=/nonexistent/sam_vit_h.pth", "superpixels.source=felzenszwalb"]


def test_demo_preset_uses_a_cpu_source() -> None:
    assert load_config("demo").superpixels.source in METHODS


def test_stage_runs_without_sam(synthetic: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tag2mask.models.sam as sam_models
    from tag2mask.stages.superpixels import build_generator, run_superpixels, superpixels_dir

    def no_sam(*args: object, **kwargs: object) -> None:
        raise AssertionError("a CPU source must not load SAM")

    monkeypatch.setattr(sam_models, "load_sam", no_sam)
    config = load_config("demo", _overrides(synthetic, tmp_path / "cache"))
    assert isinstance(build_generator(config, "cpu"), CpuSuperpixelGenerator)
    res = run_superpixels(config, "train", limit=2, show_progress=False)
    assert (res.computed, res.done, res.total) == (2, 2, 2) and res.complete
    assert res.folder == superpixels_dir(config, "train")
    for image_id in ("train_0000", "train_0001"):
        sp = Superpixels.load(res.folder / image_id)
        assert sp.size == (48, 64) and len(sp) > 0 and sp.preset == "felzenszwalb"
        assert set(np.unique(sp.levels)) <= {0, 1, 2}
    assert run_superpixels(config, "train", limit=2, show_progress=False).computed == 0  # cached


def test_cache_key_of_a_cpu_source(synthetic: Path, tmp_path: Path) -> None:
    from tag2mask.stages.superpixels import superpixels_key

    base = _overrides(synthetic, tmp_path)

    def key(*extra: str) -> str:
        return superpixels_key(load_config("demo", [*base, *extra]), "train")

    cpu = key()
    assert cpu != key("superpixels.source=sam")  # not the SAM folder
    assert cpu != key("superpixels.source=slic")  # the method
    assert cpu != key("superpixels.hierarchy_recall_thresh=0.5")  # its parameters
    assert cpu != key("superpixels.hierarchy_recall_thresh=null")
    # not SAM or SAM's generator settings
    assert cpu == key("models.sam=other.pth", "models.sam_type=vit_b", "superpixels.box_nms_thresh=0.5",
                      "superpixels.points_per_side=4")
    assert key("superpixels.source=sam") != key("superpixels.source=sam", "models.sam=other.pth")
