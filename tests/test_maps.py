"""tag2mask.maps: the one min-max normalisation (SPEC's mmnorm) and the thread-invariant bilinear resize that CAA,
SAMS, the argmax and CRF seeds, CLIP-ES's maps and the report's figures all use."""

from __future__ import annotations

import numpy as np
import torch

from tag2mask.maps import MMNORM_EPS, mmnorm, resize_maps


def test_mmnorm_by_hand() -> None:
    x = torch.tensor([[-1.0, 0.0, 2.0], [1.0, 3.0, 5.0]])

    def f32(a: float, b: float) -> float:  # a / (b + 1e-7) in float32 arithmetic, as the maps are computed
        return float(torch.tensor(a) / (torch.tensor(b) + MMNORM_EPS))

    # clamped at 0 first: row 0 → [0, 0, 2] / (2 + 1e-7); row 1 → [0, 2, 4] / (4 + 1e-7)
    expected = torch.tensor([[0.0, 0.0, f32(2, 2)], [0.0, f32(2, 4), f32(4, 4)]])
    torch.testing.assert_close(mmnorm(x, dim=1), expected, rtol=0, atol=0)
    assert f32(2, 2) == 1.0 and f32(0.5, 0.5) < 1.0  # float32: the epsilon vanishes beside 2, not beside 0.5
    # without clamping the negative value is the minimum
    torch.testing.assert_close(mmnorm(x, dim=1, clamp=False)[0], torch.tensor([0.0, f32(1, 3), f32(3, 3)]),
                               rtol=0, atol=0)
    # a flat map gives zeros, never NaN; the dtype is kept
    flat = mmnorm(torch.full((2, 3, 4), 0.5, dtype=torch.float64), dim=(1, 2))
    assert flat.dtype == torch.float64 and torch.equal(flat, torch.zeros_like(flat))


def test_resize_is_the_same_for_any_thread_count() -> None:
    maps = torch.rand(3, 24, 32, generator=torch.Generator().manual_seed(0))
    before = torch.get_num_threads()
    try:
        out = {}
        for n in (1, 2):
            torch.set_num_threads(n)
            out[n] = resize_maps(maps, (375, 500))
    finally:
        torch.set_num_threads(before)
    assert out[1].shape == (3, 375, 500) and torch.equal(out[1], out[2])
    assert resize_maps(maps, (24, 32)) is maps and resize_maps(maps[:0], (5, 6)).shape == (0, 5, 6)


def test_every_user_normalises_alike() -> None:
    from tag2mask.cam.affinity import cam_to_score
    from tag2mask.seeding.crf import crf_scores
    from tag2mask.viz.figures import minmax01

    cam = torch.randn(2, 6, 8, generator=torch.Generator().manual_seed(1))
    score = cam_to_score(cam)
    torch.testing.assert_close(torch.from_numpy(crf_scores(cam.numpy(), (6, 8))[1:]), score, rtol=0, atol=0)
    np.testing.assert_allclose(minmax01(cam[0].numpy()), score[0].numpy(), rtol=0, atol=1e-7)
