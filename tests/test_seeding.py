"""SAMS seeding and argmax seeds (SPEC §3, §8, §9, §11.2, §13 items 16–18, Appendix C).

Reference cases (`tests/data/sams_*.npz`, `seed_argmax_00.npz`) were computed by the authors' own code
(copied from the project's shared reference cases; see `tests/data/sams_params.json`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tag2mask.seeding import (
    SeedingIndex,
    argmax_seed,
    precompute_superpixels,
    sams_refine,
    sams_scores,
    sams_seed,
)

DATA = Path(__file__).parent / "data"
POWERS = {"cls": 0.6, "seg": 0.7}  # SPEC §8 table, VOC coarse / fine; tests/data/sams_params.json


def _load(name: str) -> dict[str, np.ndarray]:
    with np.load(DATA / f"{name}.npz", allow_pickle=False) as z:
        d = {k: z[k] for k in z.files}
    if "masks" in d:
        shape = tuple(int(v) for v in d["masks_shape"])
        d["masks"] = np.unpackbits(d["masks"], axis=-1, count=shape[-1]).astype(bool).reshape(shape)
    return d


def test_reference_params_file_matches_the_powers_used_here() -> None:
    params = json.loads((DATA / "sams_params.json").read_text())["params"]
    for tag, p in POWERS.items():
        assert params[tag]["bg_method"] == {"method": "pow", "pow": p}
        assert params[tag]["norm_first"] is True and params[tag]["gather_method"] == "mean"


# ----------------------------------------------------------------------------------------------------------------
# reference cases


REF_RUNS = [("sams_01", "cam"), ("sams_01", "cam_lowres"), ("sams_05", "cam_lowres")]


@pytest.mark.parametrize("tag", sorted(POWERS))
@pytest.mark.parametrize("case,cam_key", REF_RUNS)
def test_sams_matches_reference_case(case: str, cam_key: str, tag: str) -> None:
    d = _load(case)
    p = POWERS[tag]
    assert np.array_equal(d["masks"].sum(axis=(1, 2)), d["areas"])
    sc = sams_scores(d[cam_key], d["fg_cls"], d["masks"], d["levels"], p)
    # Scores: the reference sums in float32 (order depends on its torch build / CPU); ours accumulate in float64,
    # so they agree to a few float32 ulps, and every discrete output agrees exactly.
    np.testing.assert_allclose(sc.scores, d[f"ann_score_{tag}"], rtol=0, atol=5e-7)
    np.testing.assert_allclose(sc.conf, d[f"ann_conf_{tag}"], rtol=0, atol=5e-7)
    assert sc.scores.dtype == np.float32
    np.testing.assert_array_equal(sc.labels, d[f"ann_seed_{tag}"])
    np.testing.assert_array_equal(sc.paint_order, d[f"paint_order_{tag}"])
    seed = sams_seed(d[cam_key], d["fg_cls"], d["masks"], d["levels"], p)
    assert seed.dtype == np.uint8 and seed.shape == d[f"seed_{tag}"].shape
    np.testing.assert_array_equal(seed, d[f"seed_{tag}"])
    index = precompute_superpixels(d["masks"], d["levels"])
    np.testing.assert_array_equal(sams_seed(d[cam_key], d["fg_cls"], None, None, p, precomputed=index), seed)


def test_reference_resize_is_bilinear_align_corners_false() -> None:
    d = _load("sams_01")
    up = F.interpolate(torch.from_numpy(d["cam_lowres"])[None], size=d["cam"].shape[-2:], mode="bilinear",
                       align_corners=False)[0]
    assert torch.equal(up, torch.from_numpy(d["cam"]))


@pytest.mark.parametrize("power", [1, 2, 3])
def test_argmax_seed_matches_reference_case(power: int) -> None:
    d = _load("seed_argmax_00")
    seed = argmax_seed(d["cam"], d["fg_cls"], tuple(int(v) for v in d["dsize"]), float(power))
    assert seed.dtype == np.uint8
    np.testing.assert_array_equal(seed, d[f"seed_pow{power}"])
    seed_t = argmax_seed(torch.from_numpy(d["cam"]), torch.from_numpy(d["fg_cls"]), tuple(d["dsize"]), power)
    assert isinstance(seed_t, torch.Tensor)
    np.testing.assert_array_equal(seed_t.numpy(), d[f"seed_pow{power}"])


# ----------------------------------------------------------------------------------------------------------------
# a literal implementation of SPEC §8, one mask at a time, for comparisons


def _naive(
    cam: np.ndarray,
    fg_cls: list[int],
    masks: np.ndarray,
    levels: np.ndarray,
    p: float,
    norm_first: object = True,
    gather: str = "mean",
    bg_method: str = "pow",
    bg_value: Optional[float] = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(scores S×(1+P), labels, conf, order, seed) — float64 sums cast to the CAM dtype, then float32 math."""
    s, h, w = masks.shape
    x = torch.from_numpy(cam)
    if x.shape[-2:] != (h, w):
        x = F.interpolate(x[None], size=(h, w), mode="bilinear", align_corners=False)[0]
    x = x.reshape(x.shape[0], -1)

    def mm(v: torch.Tensor) -> torch.Tensor:
        v = v.clamp(min=0)
        lo, hi = v.amin(1, keepdim=True), v.amax(1, keepdim=True)
        return (v - lo) / (hi - lo + 1e-7)

    def gath(v: torch.Tensor) -> torch.Tensor:
        cols = []
        for k in range(s):
            sel = torch.from_numpy(masks[k].reshape(-1))
            tot = v[:, sel].to(torch.float64).sum(1)
            cols.append(tot / sel.sum() if gather == "mean" else tot)
        return torch.stack(cols, 1).to(v.dtype)

    if norm_first is True:
        q = mm(gath(x.clamp(min=0)))
    elif norm_first is False:
        q = mm(gath(x))
    elif norm_first == "double_norm":
        q = mm(gath(mm(x)))
    else:
        q = gath(x)
    if bg_method == "alpha_bg":
        bg, fg = q[0] ** p, q[1:]
    else:
        fg = q
        if bg_method == "pow":
            bg = (1 - fg.amax(0)) ** p
        elif bg_method == "thresh":
            bg = torch.full((s,), float(bg_value), dtype=q.dtype)
        else:
            bg = torch.full((s,), float("-inf"), dtype=q.dtype)
    scores = torch.cat([bg[None], fg]).T  # S×(1+P)
    lut = np.array([0] + [c + 1 for c in fg_cls])
    idx = np.array([int(np.argmax(row)) for row in scores.numpy()])  # numpy argmax: first maximum
    labels = lut[idx]
    conf = scores.numpy()[np.arange(s), idx]
    order = np.lexsort((conf, levels))  # primary level, then conf; lexsort is stable
    seed = np.zeros((h, w), np.uint8)
    for k in order:
        seed[masks[k]] = labels[k]
    return scores.numpy(), labels, conf, order, seed


def _random_case(seed: int, h: int = 37, w: int = 53, s: int = 12, p: int = 3, lowres: bool = True):
    rng = np.random.default_rng(seed)
    masks = np.zeros((s, h, w), bool)
    for k in range(s):
        y0, x0 = rng.integers(0, h - 2), rng.integers(0, w - 2)
        y1, x1 = rng.integers(y0 + 1, h + 1), rng.integers(x0 + 1, w + 1)
        masks[k, y0:y1, x0:x1] = True
        if rng.random() < 0.5:  # irregular: carve a random hole
            masks[k] &= rng.random((h, w)) > 0.2
        if not masks[k].any():
            masks[k, y0, x0] = True
    levels = rng.integers(0, 3, s)
    shape = (p, max(2, h // 8), max(2, w // 8)) if lowres else (p, h, w)
    cam = rng.normal(0, 1, shape).astype(np.float32)
    fg = sorted(rng.choice(20, p, replace=False).tolist())
    return cam, fg, masks, levels


# ----------------------------------------------------------------------------------------------------------------
# hand-built cases with known answers


def _strip_masks(h: int, w: int, spans: list[tuple[int, int]]) -> np.ndarray:
    """Masks that are column ranges [a, b) over all rows."""
    m = np.zeros((len(spans), h, w), bool)
    for k, (a, b) in enumerate(spans):
        m[k, :, a:b] = True
    return m


def test_higher_level_wins_overlap_regardless_of_input_order() -> None:
    h, w = 4, 12
    cam = np.zeros((1, h, w), np.float32)
    cam[0, :, 0:6] = 1.0  # strong evidence in columns 0..5
    spans = [(0, 6), (4, 9), (9, 12)]  # A: fg, B: overlaps A in cols 4,5, mostly weak -> bg, C: no evidence
    masks = _strip_masks(h, w, spans)
    for levels, expect_overlap in (([2, 0, 1], 8), ([0, 2, 1], 0)):
        seed = sams_seed(cam, [7], masks, levels, 0.7)
        assert (seed[:, 0:4] == 8).all() and (seed[:, 6:9] == 0).all() and (seed[:, 9:] == 0).all()
        assert (seed[:, 4:6] == expect_overlap).all()
        # the input order of the masks does not matter when the levels differ
        perm = [1, 0, 2]
        seed_p = sams_seed(cam, [7], masks[perm], np.asarray(levels)[perm], 0.7)
        np.testing.assert_array_equal(seed_p, seed)


def test_same_level_higher_confidence_wins() -> None:
    h, w = 4, 12
    cam = np.zeros((1, h, w), np.float32)
    cam[0, :, 0:6] = 1.0
    masks = _strip_masks(h, w, [(0, 6), (4, 9), (9, 12)])  # A fg with conf ~1; B bg with conf (1 - 1/3)^0.7
    sc = sams_scores(cam, [7], masks, [1, 1, 1], 0.7)
    np.testing.assert_array_equal(sc.labels, [8, 0, 0])
    assert sc.conf[0] > sc.conf[1]
    np.testing.assert_array_equal(sc.paint_order, [1, 0, 2])  # C (conf 1.0, bg) is painted last
    seed = sams_seed(cam, [7], masks, [1, 1, 1], 0.7)
    assert (seed[:, 4:6] == 8).all()  # A's higher confidence wins the overlap
    # now make A a less confident foreground (q = 0.6, conf 0.6) and B a confident background (q = 0, conf 1):
    # D holds the class maximum, B the minimum; B wins the overlap although A is foreground
    cam2 = np.zeros((1, h, w), np.float32)
    cam2[0, :, 0:4] = 0.9  # A = columns 0..5: mean 3.6 / 6 = 0.6
    cam2[0, :, 9:12] = 1.0  # D = columns 9..11: mean 1
    masks2 = _strip_masks(h, w, [(0, 6), (4, 9), (9, 12)])
    sc2 = sams_scores(cam2, [7], masks2, [1, 1, 1], 0.7)
    np.testing.assert_array_equal(sc2.labels, [8, 0, 8])
    assert sc2.conf[1] > sc2.conf[0]
    seed2 = sams_seed(cam2, [7], masks2, [1, 1, 1], 0.7)
    assert (seed2[:, 0:4] == 8).all() and (seed2[:, 4:9] == 0).all() and (seed2[:, 9:] == 8).all()


def test_exact_confidence_tie_keeps_input_order() -> None:
    h, w = 3, 10
    x_span, y_span, z_span = (0, 5), (3, 8), (8, 10)  # X and Y overlap in columns 3, 4; |X| == |Y|
    cam = np.zeros((2, h, w), np.float32)
    cam[0, :, slice(*x_span)] = 1.0  # class a: evidence exactly on X
    cam[1, :, slice(*y_span)] = 1.0  # class b: evidence exactly on Y
    fg = [3, 9]
    for names, expect in ((("X", "Y", "Z"), 10), (("Y", "X", "Z"), 4)):
        spans = {"X": x_span, "Y": y_span, "Z": z_span}
        masks = _strip_masks(h, w, [spans[n] for n in names])
        sc = sams_scores(cam, fg, masks, [1, 1, 1], 0.7)
        ix, iy = names.index("X"), names.index("Y")
        assert sc.conf[ix] == sc.conf[iy]  # bitwise tie
        assert sc.labels[ix] == 4 and sc.labels[iy] == 10
        assert list(sc.paint_order[:2]) == [0, 1]  # tie: input order
        seed = sams_seed(cam, fg, masks, [1, 1, 1], 0.7)
        assert (seed[:, 3:5] == expect).all()  # the later of the two in input order paints last


def test_uncovered_pixels_background_or_argmax() -> None:
    h, w = 6, 10
    rng = np.random.default_rng(3)
    cam = rng.normal(0, 1, (2, 3, 5)).astype(np.float32)
    cam[0] += 2.0
    masks = _strip_masks(h, w, [(0, 3), (2, 6), (6, 7)])  # columns 7..9 uncovered
    levels = [2, 1, 0]
    seed_bg = sams_seed(cam, [0, 4], masks, levels, 0.7)
    assert (seed_bg[:, 7:] == 0).all()
    seed_am = sams_seed(cam, [0, 4], masks, levels, 0.7, uncovered="argmax")
    np.testing.assert_array_equal(seed_am[:, :7], seed_bg[:, :7])
    pix = argmax_seed(cam, [0, 4], (h, w), 0.7)
    np.testing.assert_array_equal(seed_am[:, 7:], pix[:, 7:])
    assert (seed_am[:, 7:] != 0).any()  # the fill really differs from background here


def test_single_superpixel_collapses_to_background() -> None:
    # SPEC §13 item 17: min-max across one superpixel gives 0, so (1 - 0)^p = 1 beats every class.
    cam = np.full((2, 5, 5), 3.0, np.float32)
    masks = np.ones((1, 5, 5), bool)
    sc = sams_scores(cam, [1, 2], masks, [2], 0.7)
    np.testing.assert_array_equal(sc.scores, [[1.0, 0.0, 0.0]])
    assert (sams_seed(cam, [1, 2], masks, [2], 0.7) == 0).all()
    # with a constant background below 0 a class wins instead, the first one on a tie
    assert (sams_seed(cam, [1, 2], masks, [2], bg_method="thresh", bg_value=-1.0) == 2).all()


def test_class_with_constant_evidence_scores_zero() -> None:
    h, w = 4, 9
    cam = np.zeros((2, h, w), np.float32)
    cam[0] = 0.8  # constant: the same mean in every superpixel
    cam[1, :, 0:3] = 1.0
    masks = _strip_masks(h, w, [(0, 3), (3, 6), (6, 9)])
    sc = sams_scores(cam, [5, 6], masks, [1, 1, 1], 0.7)
    np.testing.assert_array_equal(sc.scores[:, 1], 0.0)
    np.testing.assert_array_equal(sc.labels, [7, 0, 0])


def test_no_superpixels_and_no_positive_class() -> None:
    cam = np.random.default_rng(0).normal(size=(2, 4, 4)).astype(np.float32)
    empty = np.zeros((0, 8, 8), bool)
    assert (sams_seed(cam, [1, 2], empty, []) == 0).all()
    np.testing.assert_array_equal(
        sams_seed(cam, [1, 2], empty, [], 0.7, uncovered="argmax"), argmax_seed(cam, [1, 2], (8, 8), 0.7)
    )
    masks = _strip_masks(8, 8, [(0, 4), (4, 8)])
    assert (sams_seed(np.zeros((0, 4, 4), np.float32), [], masks, [0, 1]) == 0).all()
    assert (argmax_seed(np.zeros((0, 4, 4), np.float32), [], (8, 8)) == 0).all()


def test_bad_inputs_raise() -> None:
    cam = np.zeros((1, 4, 4), np.float32)
    masks = _strip_masks(4, 4, [(0, 2), (2, 4)])
    with pytest.raises(ValueError, match="empty"):
        sams_seed(cam, [0], np.concatenate([masks, np.zeros((1, 4, 4), bool)]), [0, 0, 0])
    with pytest.raises(ValueError, match="channels"):
        sams_seed(cam, [0, 1], masks, [0, 0])
    with pytest.raises(ValueError, match="background channel"):
        sams_seed(cam, [0], masks, [0, 0], bg_method="alpha_bg")
    with pytest.raises(ValueError, match="bg_value"):
        sams_seed(cam, [0], masks, [0, 0], bg_method="thresh")
    with pytest.raises(ValueError, match="gamma_softmax"):
        sams_seed(cam, [0], masks, [0, 0], norm_first="gamma_softmax")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        sams_seed(cam, [0], masks, [0, 0], gather="max")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        sams_seed(cam, [0], masks, [0, 0], uncovered="ignore")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="levels"):
        sams_seed(cam, [0], masks, [0])
    index = precompute_superpixels(masks, [0, 1])
    with pytest.raises(ValueError, match="levels"):
        sams_seed(cam, [0], None, [1, 1], precomputed=index)
    with pytest.raises(ValueError, match="masks"):
        sams_seed(cam, [0], None, None)


# ----------------------------------------------------------------------------------------------------------------
# options against the literal implementation, precomputed path, numpy vs torch


OPTIONS = [
    dict(),
    dict(norm_first=False),
    dict(norm_first="double_norm"),
    dict(norm_first="no_norm"),
    dict(gather="sum"),
    dict(bg_method="thresh", bg_value=0.4),
    dict(bg_method="no_bg"),
    dict(norm_first=False, gather="sum", bg_method="thresh", bg_value=0.2),
]


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("opts", OPTIONS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "reference")
def test_options_match_literal_implementation(seed: int, opts: dict) -> None:
    cam, fg, masks, levels = _random_case(seed)
    p = 0.7 if seed % 2 else 1.3
    scores, labels, conf, order, seed_ref = _naive(cam, fg, masks, levels, p, **opts)
    sc = sams_scores(cam, fg, masks, levels, p, **opts)
    np.testing.assert_allclose(sc.scores, scores, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(sc.labels, labels)
    np.testing.assert_array_equal(sc.paint_order, order)
    np.testing.assert_array_equal(sams_seed(cam, fg, masks, levels, p, **opts), seed_ref)


@pytest.mark.parametrize("seed", range(4))
def test_alpha_bg_matches_literal_implementation(seed: int) -> None:
    cam, fg, masks, levels = _random_case(seed, lowres=False)
    prob = torch.softmax(torch.from_numpy(np.concatenate([cam[:1], cam])) * 2, dim=0).numpy()  # (1+P) channels
    for alpha in (0.5, 1.0, 3.0):
        _, labels, _, order, seed_ref = _naive(
            prob, fg, masks, levels, alpha, norm_first="no_norm", bg_method="alpha_bg"
        )
        sc = sams_scores(prob, fg, masks, levels, alpha, norm_first="no_norm", bg_method="alpha_bg")
        np.testing.assert_array_equal(sc.labels, labels)
        np.testing.assert_array_equal(sc.paint_order, order)
        np.testing.assert_array_equal(sams_refine(prob, fg, masks, levels, alpha), seed_ref)


@pytest.mark.parametrize("seed", range(8))
def test_precomputed_path_is_identical_to_direct_path(seed: int, tmp_path: Path) -> None:
    s = [5, 12, 40, 70, 130, 1, 9, 64][seed]  # > 64 masks: several 64-bit words per pixel code
    cam, fg, masks, levels = _random_case(seed, h=29 + seed, w=41, s=s)
    index = precompute_superpixels(masks, levels)
    np.testing.assert_array_equal(index.masks(), masks)
    np.testing.assert_array_equal(index.mask_areas(), masks.sum(axis=(1, 2)))
    np.savez(tmp_path / "index.npz", **index.to_arrays(prefix="img0/"))
    with np.load(tmp_path / "index.npz", allow_pickle=False) as z:
        loaded = SeedingIndex.from_arrays(z, prefix="img0/")
    for opts in ({}, {"uncovered": "argmax"}, {"norm_first": "double_norm", "bg_method": "thresh", "bg_value": 0.3}):
        direct = sams_seed(cam, fg, masks, levels, 0.6, **opts)
        np.testing.assert_array_equal(sams_seed(cam, fg, None, None, 0.6, precomputed=index, **opts), direct)
        np.testing.assert_array_equal(sams_seed(cam, fg, masks, levels, 0.6, precomputed=loaded, **opts), direct)
    a = sams_scores(cam, fg, masks, levels, 0.6)
    b = sams_scores(cam, fg, None, None, 0.6, precomputed=loaded)
    for f in ("scores", "labels", "conf", "paint_order"):
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f))


def test_atoms_are_canonical_and_small() -> None:
    cam, fg, masks, levels = _random_case(11, s=20)
    a = precompute_superpixels(masks, levels)
    b = precompute_superpixels(torch.from_numpy(masks), torch.from_numpy(levels))
    for k, v in a.to_arrays().items():
        np.testing.assert_array_equal(v, b.to_arrays()[k])
    assert a.atom_map.dtype == np.int32 and a.membership.dtype == np.bool_
    # one atom per distinct per-pixel membership pattern, no more, no fewer
    assert len({row.tobytes() for row in a.membership}) == a.num_atoms
    assert a.num_atoms == np.unique(masks.reshape(masks.shape[0], -1), axis=1).shape[1]


def test_seeding_index_validates() -> None:
    _, _, masks, levels = _random_case(1, s=6)
    arrays = precompute_superpixels(masks, levels).to_arrays()
    with pytest.raises(ValueError, match="atom_map"):
        SeedingIndex.from_arrays({**arrays, "atom_map": arrays["atom_map"] + 1000})
    with pytest.raises(ValueError, match="levels"):
        SeedingIndex.from_arrays({**arrays, "levels": arrays["levels"][:-1]})
    with pytest.raises(ValueError, match="sum"):
        SeedingIndex.from_arrays({**arrays, "atom_area": arrays["atom_area"] + 1})


def test_numpy_and_torch_inputs_agree() -> None:
    d = _load("sams_05")
    seed_np = sams_seed(d["cam_lowres"], d["fg_cls"], d["masks"], d["levels"], 0.7)
    seed_t = sams_seed(
        torch.from_numpy(d["cam_lowres"]),
        torch.from_numpy(d["fg_cls"]),
        torch.from_numpy(d["masks"]),
        torch.from_numpy(d["levels"]),
        0.7,
    )
    assert isinstance(seed_t, torch.Tensor) and seed_t.dtype == torch.uint8
    np.testing.assert_array_equal(seed_t.numpy(), seed_np)
    # mixed: torch CAM, numpy masks, list inputs; uint8 masks are accepted as well
    seed_m = sams_seed(torch.from_numpy(d["cam_lowres"]), list(d["fg_cls"]), d["masks"].astype(np.uint8),
                       list(d["levels"]), 0.7)
    np.testing.assert_array_equal(seed_m.numpy(), seed_np)
    sc = sams_scores(torch.from_numpy(d["cam_lowres"]), d["fg_cls"], d["masks"], d["levels"], 0.7)
    assert isinstance(sc.scores, torch.Tensor) and sc.scores.shape == (24, 4)


def test_float64_input_keeps_its_dtype() -> None:
    d = _load("sams_05")
    sc = sams_scores(d["cam_lowres"].astype(np.float64), d["fg_cls"], d["masks"], d["levels"], 0.7)
    assert sc.scores.dtype == np.float64
    np.testing.assert_array_equal(sc.labels, d["ann_seed_seg"])


def test_inputs_are_not_modified() -> None:
    cam, fg, masks, levels = _random_case(2)
    cam0, masks0, levels0 = cam.copy(), masks.copy(), levels.copy()
    sams_seed(cam, fg, masks, levels, uncovered="argmax")
    argmax_seed(cam, fg, masks.shape[1:])
    np.testing.assert_array_equal(cam, cam0)
    np.testing.assert_array_equal(masks, masks0)
    np.testing.assert_array_equal(levels, levels0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu() -> None:
    for seed in range(4):
        cam, fg, masks, levels = _random_case(seed, s=[8, 30, 70, 3][seed])
        cpu = sams_seed(cam, fg, masks, levels, 0.7, uncovered="argmax")
        dev = sams_seed(torch.from_numpy(cam).cuda(), fg, torch.from_numpy(masks).cuda(), levels, 0.7,
                        uncovered="argmax")
        assert dev.device.type == "cuda"
        np.testing.assert_array_equal(dev.cpu().numpy(), cpu)
        index = precompute_superpixels(torch.from_numpy(masks).cuda(), levels)
        np.testing.assert_array_equal(index.masks(), masks)
        pre = sams_seed(torch.from_numpy(cam).cuda(), fg, None, None, 0.7, precomputed=index, uncovered="argmax")
        np.testing.assert_array_equal(pre.cpu().numpy(), cpu)


# ----------------------------------------------------------------------------------------------------------------
# SAMS refinement (SPEC §11.2)


def test_sams_refine_alpha_and_uncovered() -> None:
    h, w = 2, 10
    prob = np.zeros((2, h, w), np.float32)  # channel 0 background, channel 1 class 14
    prob[0] = 0.6
    prob[1] = 0.4
    prob[:, :, 5:] = [[[0.1]], [[0.9]]]  # columns 5.. are confidently class 14
    masks = _strip_masks(h, w, [(0, 4), (5, 8)])  # columns 4 and 8, 9 are uncovered
    # alpha 1: superpixel 0 has mean bg 0.6 > 0.4 -> background
    seed1 = sams_refine(prob, [14], masks, [1, 1], alpha=1.0)
    assert (seed1[:, 0:4] == 0).all() and (seed1[:, 5:8] == 15).all()
    assert (seed1[:, 4] == 0).all() and (seed1[:, 8:] == 0).all()
    # alpha 2: 0.6^2 = 0.36 < 0.4 -> class 14
    seed2 = sams_refine(prob, [14], masks, [1, 1], alpha=2.0)
    assert (seed2[:, 0:4] == 15).all()
    # uncovered -> the network's own argmax (alpha not applied): column 4 bg, columns 8, 9 class 14
    seed3 = sams_refine(prob, [14], masks, [1, 1], alpha=2.0, uncovered="argmax")
    assert (seed3[:, 4] == 0).all() and (seed3[:, 8:] == 15).all() and (seed3[:, :4] == 15).all()
    # equals sams_seed with the §11.2 settings
    np.testing.assert_array_equal(
        seed2, sams_seed(prob, [14], masks, [1, 1], 2.0, norm_first="no_norm", bg_method="alpha_bg")
    )


# ----------------------------------------------------------------------------------------------------------------
# Superpixels input, SeedingIndex.from_superpixels, the generic (non-CPU) form, resize thread independence

SP_WARN = "ignore:__array__ implementation:DeprecationWarning"  # pycocotools on numpy 2


def _superpixels(masks: np.ndarray, levels: np.ndarray):
    from tag2mask.superpixels import Superpixels

    return Superpixels.from_masks(masks, levels)


def _same_behaviour(a: SeedingIndex, b: SeedingIndex) -> None:
    """Equal decompositions up to the atom numbering."""
    assert a.shape == b.shape and a.num_atoms == b.num_atoms
    np.testing.assert_array_equal(a.levels, b.levels)
    np.testing.assert_array_equal(a.masks(), b.masks())
    np.testing.assert_array_equal(a.mask_areas(), b.mask_areas())
    key_a = {row.tobytes(): int(n) for row, n in zip(a.membership, a.atom_area)}
    key_b = {row.tobytes(): int(n) for row, n in zip(b.membership, b.atom_area)}
    assert key_a == key_b


SP_OPTIONS = [{}, {"uncovered": "argmax"}, {"norm_first": False, "gather": "sum"}, {"norm_first": "double_norm"}]


@pytest.mark.filterwarnings(SP_WARN)
@pytest.mark.parametrize("seed", range(5))
def test_superpixels_input_gives_the_same_seed_as_the_mask_stack(seed: int) -> None:
    cam, fg, masks, levels = _random_case(seed, s=[4, 12, 30, 70, 1][seed])
    sp = _superpixels(masks, levels)
    for opts in SP_OPTIONS:
        ref = sams_seed(cam, fg, masks, levels, 0.7, **opts)
        np.testing.assert_array_equal(sams_seed(cam, fg, sp, None, 0.7, **opts), ref)
        np.testing.assert_array_equal(sams_seed(cam, fg, sp, levels, 0.7, **opts), ref)  # equal levels: fine
        np.testing.assert_array_equal(sams_seed(cam, fg, sp, None, 0.7, precomputed=precompute_superpixels(
            masks, levels), **opts), ref)
    a = sams_scores(cam, fg, masks, levels, 0.7)
    b = sams_scores(cam, fg, sp, None, 0.7)
    for f in ("scores", "labels", "conf", "paint_order"):
        np.testing.assert_array_equal(getattr(b, f), getattr(a, f))
    prob = torch.softmax(torch.from_numpy(np.concatenate([cam[:1], cam])), dim=0).numpy()
    np.testing.assert_array_equal(sams_refine(prob, fg, sp, None, 2.0), sams_refine(prob, fg, masks, levels, 2.0))
    # torch CAM: the output is a tensor either way
    seed_t = sams_seed(torch.from_numpy(cam), fg, sp, None, 0.7)
    assert isinstance(seed_t, torch.Tensor)
    np.testing.assert_array_equal(seed_t.numpy(), sams_seed(cam, fg, masks, levels, 0.7))


@pytest.mark.filterwarnings(SP_WARN)
@pytest.mark.parametrize("case,cam_key", REF_RUNS)
def test_superpixels_input_matches_reference_case(case: str, cam_key: str) -> None:
    d = _load(case)
    sp = _superpixels(d["masks"], d["levels"])
    for tag, p in POWERS.items():
        np.testing.assert_array_equal(sams_seed(d[cam_key], d["fg_cls"], sp, None, p), d[f"seed_{tag}"])
        sc = sams_scores(d[cam_key], d["fg_cls"], sp, None, p)
        np.testing.assert_array_equal(sc.labels, d[f"ann_seed_{tag}"])
        np.testing.assert_array_equal(sc.paint_order, d[f"paint_order_{tag}"])


@pytest.mark.filterwarnings(SP_WARN)
def test_superpixels_levels_mismatch_is_an_error() -> None:
    cam, fg, masks, levels = _random_case(4, s=6)
    sp = _superpixels(masks, levels)
    wrong = (levels + 1) % 3
    with pytest.raises(ValueError, match="levels"):
        sams_seed(cam, fg, sp, wrong)
    with pytest.raises(ValueError, match="levels"):
        sams_scores(cam, fg, sp, list(wrong))
    with pytest.raises(ValueError, match="levels"):
        sams_refine(np.concatenate([cam[:1], cam]), fg, sp, torch.from_numpy(wrong))
    with pytest.raises(ValueError, match="levels"):
        sams_seed(cam, fg, sp, levels[:-1])  # wrong length
    with pytest.raises(ValueError, match="levels"):
        precompute_superpixels(sp, wrong)
    with pytest.raises(ValueError, match="levels"):  # a precomputed index of other levels next to the Superpixels
        sams_seed(cam, fg, sp, None, precomputed=precompute_superpixels(masks, wrong))
    with pytest.raises(TypeError):
        SeedingIndex.from_superpixels(masks)


@pytest.mark.filterwarnings(SP_WARN)
def test_superpixels_with_an_empty_mask_is_an_error() -> None:
    cam, fg, masks, levels = _random_case(5, s=5)
    masks[2] = False
    with pytest.raises(ValueError, match="mask 2 is empty"):
        sams_seed(cam, fg, _superpixels(masks, levels), None)


@pytest.mark.filterwarnings(SP_WARN)
@pytest.mark.parametrize("seed", range(6))
def test_precompute_superpixels_equals_from_superpixels(seed: int) -> None:
    s = [3, 12, 40, 70, 130, 1][seed]  # > 64 masks: several words per pixel code
    cam, fg, masks, levels = _random_case(seed, h=31 + seed, w=43, s=s)
    sp = _superpixels(masks, levels)
    a = precompute_superpixels(masks, levels)
    b = SeedingIndex.from_superpixels(sp)
    assert b.atom_map is sp.atoms and b.membership is sp.atom_membership  # no copy, no decoding
    _same_behaviour(a, b)
    _same_behaviour(precompute_superpixels(sp, None), b)
    _same_behaviour(precompute_superpixels(sp.masks, sp.levels), b)
    for opts in SP_OPTIONS:
        np.testing.assert_array_equal(
            sams_seed(cam, fg, None, None, 0.6, precomputed=a, **opts),
            sams_seed(cam, fg, None, None, 0.6, precomputed=b, **opts),
        )
    sa = sams_scores(cam, fg, None, None, 0.6, precomputed=a)
    sb = sams_scores(cam, fg, None, None, 0.6, precomputed=b)
    for f in ("labels", "paint_order"):
        np.testing.assert_array_equal(getattr(sa, f), getattr(sb, f))
    np.testing.assert_allclose(sa.scores, sb.scores, rtol=0, atol=1e-7)


@pytest.mark.parametrize("seed", range(4))
def test_generic_torch_form_equals_cpu_runs_form(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The form used off the CPU (``index_add`` over pixels, ``take``) against the CPU one (runs + numpy)."""
    from tag2mask.superpixels import index as index_mod

    cam, fg, masks, levels = _random_case(seed, s=[8, 30, 70, 3][seed])
    index = precompute_superpixels(masks, levels)
    opts_list = [{}, {"uncovered": "argmax"}, {"norm_first": "no_norm", "gather": "sum"}]
    runs = [sams_seed(cam, fg, None, None, 0.7, precomputed=index, **o) for o in opts_list]
    runs_sc = sams_scores(cam, fg, None, None, 0.7, precomputed=index)
    monkeypatch.setattr(index_mod, "CPU_RUNS", False)
    for o, ref in zip(opts_list, runs):
        np.testing.assert_array_equal(sams_seed(cam, fg, None, None, 0.7, precomputed=index, **o), ref)
    sc = sams_scores(cam, fg, None, None, 0.7, precomputed=index)
    np.testing.assert_array_equal(sc.labels, runs_sc.labels)
    np.testing.assert_array_equal(sc.paint_order, runs_sc.paint_order)
    np.testing.assert_allclose(sc.scores, runs_sc.scores, rtol=0, atol=1e-7)


def test_cam_that_requires_grad() -> None:
    cam, fg, masks, levels = _random_case(6)
    ref = sams_seed(cam, fg, masks, levels, 0.7)
    seed = sams_seed(torch.from_numpy(cam).requires_grad_(True), fg, masks, levels, 0.7)
    np.testing.assert_array_equal(seed.numpy(), ref)


def test_resize_does_not_depend_on_the_thread_count() -> None:
    """torch's CPU bilinear kernel for a 1×3×h×w input depends on the thread count; ours must not."""
    rng = np.random.default_rng(0)
    h, w = 90, 120  # H + W > 128: torch's generic / channels-last choice applies
    # single-pixel superpixels with norm_first="no_norm": the scores are the resized CAM values themselves
    pix = rng.choice(h * w, 200, replace=False)
    masks = np.zeros((len(pix), h * w), bool)
    masks[np.arange(len(pix)), pix] = True
    masks = masks.reshape(-1, h, w)
    levels = np.ones(len(pix), np.int64)
    cam = rng.normal(0, 1, (3, 7, 9)).astype(np.float32)
    threads = torch.get_num_threads()
    try:
        out = []
        for n in (1, 2):
            torch.set_num_threads(n)
            sc = sams_scores(cam, [1, 2, 3], masks, levels, 0.7, norm_first="no_norm", bg_method="no_bg")
            out.append((sc.scores, argmax_seed(cam, [1, 2, 3], (h, w), 0.7)))
    finally:
        torch.set_num_threads(threads)
    up = F.interpolate(torch.from_numpy(cam)[:, None], size=(h, w), mode="bilinear", align_corners=False)[:, 0]
    np.testing.assert_array_equal(out[0][0][:, 1:], up.reshape(3, -1)[:, pix].T.numpy())
    np.testing.assert_array_equal(out[0][0], out[1][0])
    np.testing.assert_array_equal(out[0][1], out[1][1])


def test_index_copies_without_its_cache() -> None:
    import copy

    cam, fg, masks, levels = _random_case(7)
    index = precompute_superpixels(masks, levels)
    ref = sams_seed(cam, fg, None, None, 0.7, precomputed=index)  # fills the cache
    assert index._cache
    back = copy.deepcopy(index)  # the state protocol that worker processes also use
    assert not back._cache
    np.testing.assert_array_equal(sams_seed(cam, fg, None, None, 0.7, precomputed=back), ref)


def test_full_resolution_inputs_are_not_modified() -> None:
    """No resize: the evidence is the caller's own array, which the in-place clamp must not touch."""
    cam, fg, masks, levels = _random_case(3, lowres=False)
    index = precompute_superpixels(masks, levels)
    cam0 = cam.copy()
    sams_seed(cam, fg, masks, levels, uncovered="argmax")
    sams_seed(torch.from_numpy(cam), fg, None, None, precomputed=index)
    sams_scores(cam, fg, None, None, precomputed=index, norm_first="double_norm")
    np.testing.assert_array_equal(cam, cam0)
    prob = np.concatenate([cam[:1], cam])
    prob0 = prob.copy()
    sams_refine(prob, fg, masks, levels, 2.0, "argmax")
    np.testing.assert_array_equal(prob, prob0)


def test_all_negative_cam_gives_all_background() -> None:
    masks = np.zeros((2, 4, 4), bool)
    masks[0, :2], masks[1, 2:] = True, True
    seed = sams_seed(-np.ones((1, 4, 4), np.float32), [3], masks, [2, 2], 0.7)
    assert np.all(seed == 0)


def test_duplicated_masks_change_nothing() -> None:
    rng = np.random.default_rng(7)
    masks = rng.random((6, 12, 10)) > 0.6
    levels = np.array([2, 2, 1, 1, 0, 0])
    cam = rng.normal(size=(2, 3, 3)).astype(np.float32)
    base = sams_seed(cam, [4, 9], masks, levels, 0.7)
    dup = sams_seed(cam, [4, 9], np.concatenate([masks, masks[[1, 3]]]), np.concatenate([levels, levels[[1, 3]]]), 0.7)
    np.testing.assert_array_equal(base, dup)
