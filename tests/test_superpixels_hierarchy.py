"""Hierarchy ("rock–sand–water") filter, SPEC §7.3 step 9 / Appendix C: reference cases and hand-built cases."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tag2mask.superpixels import compute_atoms, hierarchy_filter

DATA = Path(__file__).parent / "data"


def _unpack(z: dict, key: str) -> np.ndarray:
    shape = tuple(z[key + "_shape"])
    return np.unpackbits(z[key], axis=-1, count=shape[-1]).astype(bool).reshape(shape)


def _load(case: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    with np.load(DATA / f"{case}.npz") as z:
        return _unpack(z, "masks"), z["levels"], z["kept"]


@pytest.mark.parametrize("case", ["rsw_00", "rsw_01"])
def test_reference_cases_numpy(case: str) -> None:
    masks, levels, kept = _load(case)
    out = hierarchy_filter(masks, levels, recall_thresh=0.3)
    assert out.dtype == np.int64
    np.testing.assert_array_equal(out, kept)


@pytest.mark.parametrize("case", ["rsw_00", "rsw_01"])
def test_reference_cases_torch(case: str) -> None:
    masks, levels, kept = _load(case)
    out = hierarchy_filter(torch.from_numpy(masks), torch.from_numpy(levels.astype(np.int64)))
    np.testing.assert_array_equal(out, kept)
    # 0/1 uint8 masks are accepted as well
    np.testing.assert_array_equal(hierarchy_filter(masks.astype(np.uint8), levels.tolist()), kept)


def _canvas(n: int, h: int = 10, w: int = 40) -> np.ndarray:
    return np.zeros((n, h, w), bool)


def test_strict_less_than_at_exactly_the_threshold() -> None:
    m = _canvas(3, h=1, w=40)
    m[0, 0, 0:10] = True  # whole
    m[1, 0, 7:17] = True  # part: 3 of its 10 pixels inside the whole -> recall exactly 0.3 -> dropped
    m[2, 0, 8:18] = True  # part: 2 of 10 inside -> recall 0.2 -> kept
    np.testing.assert_array_equal(hierarchy_filter(m, [2, 1, 1], 0.3), [0, 2])
    # just above the recall -> kept
    np.testing.assert_array_equal(hierarchy_filter(m, [2, 1, 1], 0.3000001), [0, 1, 2])


def test_level_with_nothing_above_becomes_the_container() -> None:
    m = _canvas(4)
    m[0, :, 0:10] = True  # part
    m[1, :, 5:15] = True  # part overlapping the first: both kept (same level, nothing above)
    m[2, :, 0:4] = True  # subpart inside part 0 -> dropped
    m[3, :, 30:34] = True  # subpart outside every part -> kept
    np.testing.assert_array_equal(hierarchy_filter(m, [1, 1, 0, 0]), [0, 1, 3])
    # only subparts: all kept, even when nested
    np.testing.assert_array_equal(hierarchy_filter(m, [0, 0, 0, 0]), [0, 1, 2, 3])
    # wholes only
    np.testing.assert_array_equal(hierarchy_filter(m, [2, 2, 2, 2]), [0, 1, 2, 3])


def test_accepted_parts_shadow_subparts_and_rejected_parts_do_not() -> None:
    m = _canvas(5)
    m[0, :, 0:10] = True  # whole W
    m[1, :, 20:30] = True  # part A, outside W -> accepted
    m[2, :, 0:12] = True  # part B, 10/12 inside W -> rejected
    m[3, :, 22:26] = True  # subpart inside A -> shadowed by the accepted part -> dropped
    m[4, :, 10:12] = True  # subpart inside B only (B rejected, not in the container) -> kept
    np.testing.assert_array_equal(hierarchy_filter(m, [2, 1, 1, 0, 0]), [0, 1, 4])


def test_recall_is_relative_to_the_candidate_not_iou() -> None:
    m = _canvas(2, h=1, w=100)
    m[0, 0, 0:100] = True  # big whole
    m[1, 0, 0:5] = True  # small part fully inside: IoU 0.05 but recall 1.0 -> dropped
    np.testing.assert_array_equal(hierarchy_filter(m, [2, 1]), [0])
    # the reverse nesting: a small whole inside a big part, recall of the part is 0.05 -> kept
    np.testing.assert_array_equal(hierarchy_filter(m, [1, 2]), [1, 0])


def test_output_order_is_level_then_input_order() -> None:
    m = _canvas(6)
    for i in range(6):
        m[i, :, 6 * i : 6 * i + 5] = True  # disjoint: everything is kept
    levels = [0, 2, 1, 2, 0, 1]
    np.testing.assert_array_equal(hierarchy_filter(m, levels), [1, 3, 2, 5, 0, 4])


def test_empty_inputs_and_empty_candidates() -> None:
    assert hierarchy_filter(np.zeros((0, 4, 5), bool), []).tolist() == []
    m = _canvas(3)
    m[0, :, :5] = True
    # an empty part has recall 0/0 (NaN) against the container and is dropped
    np.testing.assert_array_equal(hierarchy_filter(m, [2, 1, 0]), [0])


def test_bad_levels_are_refused() -> None:
    with pytest.raises(ValueError):
        hierarchy_filter(_canvas(2), [0, 3])
    with pytest.raises(ValueError):
        hierarchy_filter(_canvas(2), [0])


def test_matches_a_direct_double_loop_on_random_masks() -> None:
    rng = np.random.default_rng(7)
    h, w, n = 37, 45, 60
    yy, xx = np.mgrid[0:h, 0:w]
    levels = rng.integers(0, 3, n)
    masks = np.zeros((n, h, w), bool)
    for i in range(n):
        r = (3 + 6 * levels[i]) * rng.uniform(0.6, 1.4)
        masks[i] = (yy - rng.uniform(0, h)) ** 2 + (xx - rng.uniform(0, w)) ** 2 < r * r
    for thresh in (0.1, 0.3, 0.6):
        kept: list[int] = []
        for level in (2, 1, 0):
            cand = [i for i in range(n) if levels[i] == level]
            if not kept:
                kept += cand
                continue
            kept += [
                i for i in cand if max((masks[i] & masks[k]).sum() / masks[i].sum() for k in kept) < thresh
            ]
        np.testing.assert_array_equal(hierarchy_filter(masks, levels, thresh), kept)


def test_atoms_describe_the_cover_of_every_pixel() -> None:
    rng = np.random.default_rng(3)
    for n, h, w in [(0, 4, 6), (1, 3, 3), (9, 13, 11), (70, 21, 19)]:
        masks = rng.random((n, h, w)) < 0.3
        atoms = compute_atoms(masks)
        assert atoms.atoms.dtype == np.int32 and atoms.atoms.shape == (h, w)
        np.testing.assert_array_equal(atoms.membership[atoms.atoms].reshape(h * w, n), masks.reshape(n, h * w).T)
        assert atoms.area.sum() == h * w and (atoms.area > 0).all()
        np.testing.assert_array_equal(np.bincount(atoms.atoms.ravel(), minlength=len(atoms.area)), atoms.area)
        assert len(np.unique(atoms.membership, axis=0)) == len(atoms.area)  # one atom per distinct cover
        if not masks.any(axis=0).all():
            assert not atoms.membership[0].any()  # the uncovered pixels are atom 0


def _rect(h: int, w: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    m = np.zeros((h, w), bool)
    m[y0:y1, x0:x1] = True
    return m


def test_nested_boxes() -> None:
    """Russian dolls: whole ⊃ part ⊃ subpart, and a second part/subpart pair outside the whole."""
    h, w = 40, 60
    m = np.stack(
        [
            _rect(h, w, 0, 30, 0, 30),  # 0 whole
            _rect(h, w, 5, 25, 5, 25),  # 1 part inside the whole -> dropped
            _rect(h, w, 10, 20, 10, 20),  # 2 subpart inside both -> dropped
            _rect(h, w, 0, 30, 35, 60),  # 3 part outside the whole -> kept
            _rect(h, w, 10, 20, 40, 50),  # 4 subpart inside the kept part -> dropped
            _rect(h, w, 10, 20, 12, 20),  # 5 subpart inside the dropped part 1, but also inside the whole -> dropped
            _rect(h, w, 32, 40, 0, 60),  # 6 subpart below everything -> kept
        ]
    )
    levels = [2, 1, 0, 1, 0, 0, 0]
    np.testing.assert_array_equal(hierarchy_filter(m, levels), [0, 3, 6])
    # without the whole, the part inside it becomes a container member and shadows its subparts
    np.testing.assert_array_equal(hierarchy_filter(m[1:], levels[1:]), [0, 2, 5])


def test_exact_duplicates_within_and_across_levels() -> None:
    h, w = 20, 30
    a, b = _rect(h, w, 0, 10, 0, 10), _rect(h, w, 10, 20, 15, 30)
    # within a level nothing is compared: duplicates all stay (wholes and, with nothing above, parts too)
    np.testing.assert_array_equal(hierarchy_filter(np.stack([a, a, b]), [2, 2, 2]), [0, 1, 2])
    np.testing.assert_array_equal(hierarchy_filter(np.stack([a, a]), [1, 1]), [0, 1])
    # across levels a duplicate has recall 1 and goes (a part and a subpart copying the whole); duplicate parts
    # that nothing shadows both stay
    np.testing.assert_array_equal(hierarchy_filter(np.stack([a, a, a, b, b]), [2, 1, 0, 1, 1]), [0, 3, 4])
    np.testing.assert_array_equal(hierarchy_filter(np.stack([b, a, b]), [1, 0, 0]), [0, 1])  # subpart copy of a part


def test_no_whole_level_mask() -> None:
    h, w = 20, 30
    m = np.stack([_rect(h, w, 0, 10, 0, 10), _rect(h, w, 2, 8, 2, 8), _rect(h, w, 0, 20, 20, 30)])
    np.testing.assert_array_equal(hierarchy_filter(m, [1, 0, 0]), [0, 2])  # parts are the container
    np.testing.assert_array_equal(hierarchy_filter(m, [0, 0, 0]), [0, 1, 2])  # subparts only: all kept


def test_touching_but_not_overlapping_masks_are_kept() -> None:
    h, w = 20, 30
    whole = _rect(h, w, 0, 20, 0, 10)
    right = _rect(h, w, 0, 20, 10, 20)  # shares the edge x = 10 with the whole, no common pixel
    below = _rect(h, w, 10, 20, 20, 30)
    corner = _rect(h, w, 0, 10, 20, 30)  # touches `below` along y = 10 and `right` along x = 20
    m = np.stack([whole, right, below, corner])
    np.testing.assert_array_equal(hierarchy_filter(m, [2, 1, 0, 0]), [0, 1, 2, 3])
    # a diagonal neighbour (touching at a corner only) as well
    diag = _rect(h, w, 0, 10, 0, 10), _rect(h, w, 10, 20, 10, 20)
    np.testing.assert_array_equal(hierarchy_filter(np.stack(diag), [2, 0]), [0, 1])
    # by contrast a one-column overlap counts: recall 10/100 = 0.1 < 0.3 keeps it, at recall_thresh 0.1 it goes
    one = _rect(h, w, 0, 10, 9, 19)  # overlaps the whole in column 9 only: 10 of its 100 pixels
    np.testing.assert_array_equal(hierarchy_filter(np.stack([whole, one]), [2, 1]), [0, 1])
    np.testing.assert_array_equal(hierarchy_filter(np.stack([whole, one]), [2, 1], 0.1), [0])
