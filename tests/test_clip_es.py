"""The training-free mode reproduces CLIP-ES's own computation (reference case ``clipes_rand_000``: every
intermediate of one 375×500 image tagged ``boat``, computed by CLIP-ES's code on the random CLIP of
``tests/data/make_random_clip.py``, float32, CPU), at the tolerances the case's README gives."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from tag2mask.cam.clip_es import CLIP_ES_TEMPLATES, clip_es_cams, clip_es_text_features
from tag2mask.cam.image import prepare_image
from tag2mask.config import load_config
from tag2mask.seeding import argmax_seed

DATA = Path(__file__).parent / "data"
VOC = load_config("voc").data
BOAT = 3  # VOC key of "boat" (label id 4)


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(np.asarray(a, np.float64) - b).max() / max(np.abs(b).max(), 1e-30))


@pytest.fixture(scope="module")
def case() -> dict[str, np.ndarray]:
    with np.load(DATA / "clipes_rand_000.npz") as z:
        return dict(z)


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """The case was computed with one thread; the session's own thread count is restored afterwards (other tests
    compare files made in this process with files made by fresh processes)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="module")
def ours(random_vit_b16: torch.nn.Module, case: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    with one_thread():
        return clip_es_cams(random_vit_b16, case["image_u8"], [VOC.fg_names[BOAT]], list(VOC.bg_names))


def test_the_voc_names_and_template_are_clip_es_own(random_vit_b16: torch.nn.Module) -> None:
    from tag2mask.models.clip import clip_tokenizer

    with np.load(DATA / "clipes_text_features.npz") as z:
        ref = dict(z)
    names = [*VOC.fg_names, *VOC.bg_names]
    assert len(VOC.fg_names) == 20 and len(VOC.bg_names) == 25
    tokens = clip_tokenizer()([CLIP_ES_TEMPLATES[0].format(n) for n in names]).numpy()
    np.testing.assert_array_equal(tokens, ref["tokens"])
    text = clip_es_text_features(random_vit_b16, names).numpy()
    # about 1e-6 relative: what open_clip's own encode_text gives here against CLIP-ES's run (9e-7 before normalising)
    assert _rel(text[:20], ref["fg_text_features"]) < 2e-6 and _rel(text[20:], ref["bg_text_features"]) < 2e-6


def test_the_image_input_is_pil_bicubic_exactly(case: dict[str, np.ndarray]) -> None:
    from tag2mask.cam.image import clip_normalise

    x = prepare_image(case["image_u8"])
    assert tuple(x.shape) == (1, 3, 384, 512)
    np.testing.assert_array_equal(x.numpy(), clip_normalise(case["image_resized_u8"])[None].numpy())


def test_image_side_matches_clip_es_given_its_text_features(random_vit_b16: torch.nn.Module,
                                                           case: dict[str, np.ndarray]) -> None:
    # the image side alone, fed CLIP-ES's own text features: logits, probabilities and CAMs about 1e-6 relative,
    # and only with the float16-rounded positional embedding (CONTEXT §2.1: 1e-5 without it)
    from tag2mask.cam.clip_es import clip_es_model

    x, text = prepare_image(case["image_u8"]), torch.from_numpy(case["text_features"])
    errors = {}
    for f16 in (True, False):
        with one_thread():
            out = clip_es_model(random_vit_b16, 1, pos_embed_f16=f16)(x, torch.ones(1, 1), text_features=text)
        errors[f16] = [_rel(out.logits[0].detach().numpy(), case["logits"]),
                       _rel(out.probs[0].detach().numpy(), case["probs"]), _rel(out.cam.detach().numpy(), case["cam_raw"])]
    assert max(errors[True]) < 3e-6 and errors[False][2] > 5e-6, errors


def test_whole_image_computation_matches_clip_es(ours: dict[str, np.ndarray], case: dict[str, np.ndarray]) -> None:
    # end to end the text encoder's 9e-7 (open_clip's own encode_text here against CLIP-ES's run) is carried on
    # through the softmax of logits scaled by 100: about 6e-6 on the CAMs
    errors = {key: _rel(ours[key], case[key]) for key in ("text_features", "image_embedding", "logits", "probs",
                                                           "cam_raw", "cam_norm1", "cam_norm", "attn_merged8")}
    assert all(ours[key].shape == case[key].shape for key in errors)
    assert all(e < 1e-5 for e in errors.values()), errors
    assert errors["image_embedding"] < 2e-6 and errors["attn_merged8"] < 2e-6, errors
    assert 0.99 < case["cam_norm1"].max() < 0.999  # the case where normalising twice matters


def test_box_mask_exact_and_refined_cams_match(ours: dict[str, np.ndarray], case: dict[str, np.ndarray]) -> None:
    np.testing.assert_array_equal(ours["box_mask"], case["box_mask"])
    assert _rel(ours["cam_refined"], case["cam_refined"]) < 1e-5
    assert np.abs(ours["cam_refined_norm"] - case["cam_refined_norm"]).max() < 1e-3
    assert ours["attn_highres"].dtype == np.float16 and ours["attn_highres"].shape == (1, 375, 500)
    assert np.abs(ours["attn_highres"].astype(np.float32) - case["attn_highres_f16"]).max() < 1e-3


@pytest.mark.parametrize("alpha", [1, 2])
def test_seeds_from_the_saved_maps_are_exact(case: dict[str, np.ndarray], alpha: int) -> None:
    seed = argmax_seed(case["attn_highres_f16"], case["keys"], (375, 500), bg_power=alpha, normalise=False)
    np.testing.assert_array_equal(seed, case[f"seed_alpha{alpha}"])


def test_seeds_compute_in_float16_with_ties_to_the_background() -> None:
    # max fg 0.5 → bg (1 − 0.5)^1 = 0.5: a tie, won by the background; of two equal classes the first wins
    maps = np.array([[[0.5, 0.25, 0.7]], [[0.5, 0.75, 0.7]]], np.float16)
    np.testing.assert_array_equal(argmax_seed(maps, [3, 7], (1, 3), bg_power=1, normalise=False), [[0, 8, 4]])
    # on any maps: exactly CLIP-ES's numpy float16 formula (ties are frequent in float16)
    rng = np.random.default_rng(0)
    maps = (rng.integers(0, 64, (3, 20, 30)) / 64).astype(np.float16)
    for alpha in (1, 2):
        bg = np.power(1 - np.max(maps, axis=0, keepdims=True), alpha)
        expected = np.array([0, 2, 5, 9], np.uint8)[np.argmax(np.concatenate([bg, maps]), axis=0)]
        np.testing.assert_array_equal(argmax_seed(maps, [1, 4, 8], (20, 30), bg_power=alpha, normalise=False),
                                      expected)


# ---------------------------------------------------------------------------------------------------------------
# CLIP-ES's rules on small hand-built inputs


def _output(cam: list, att: list):  # noqa: ANN202 - a one-image CamOutput with these raw CAMs and merged attention
    from tag2mask.cam.gradcam import CamOutput

    cam_t = torch.tensor(cam, dtype=torch.float32)
    p, h, w = cam_t.shape
    return CamOutput(cam=cam_t, logits=torch.zeros(1, p + 1), probs=torch.zeros(1, p + 1),
                     pairs=torch.tensor([[0, k] for k in range(p)]), grid=(h, w),
                     att=torch.tensor([att], dtype=torch.float32), num_fg=p, image_embedding=torch.zeros(1, 4))


def test_cam_is_normalised_twice_by_hand() -> None:
    from tag2mask.cam.clip_es import clip_es_refine

    f32 = np.float32
    out = clip_es_refine(_output([[[-0.1, 0.0], [0.1, 0.3]]], np.eye(4).tolist()))
    # once: ReLU → [0, 0, 0.1, 0.3], then / (0.3 + 1e-7) in float32 (small CAMs: the epsilon shows)
    once = np.array([0, 0, f32(0.1) / (f32(0.3) + f32(1e-7)), f32(0.3) / (f32(0.3) + f32(1e-7))], f32)
    np.testing.assert_array_equal(out["cam_norm1"].ravel(), once)
    # twice: the maximum is below 1 now, so the second pass still divides: v / (max + 1e-7)
    twice = once / (once.max() + f32(1e-7))
    np.testing.assert_array_equal(out["cam_norm"].ravel(), twice.astype(f32))
    assert once.max() < 1 and out["cam_norm"].max() > once.max()


def test_three_sinkhorn_rounds_symmetrised_and_squared_by_hand() -> None:
    # exact rationals: columns then rows, three times; (A + Aᵀ)/2; A·A; masked columns; times the normalised CAM
    from fractions import Fraction as Q

    from tag2mask.cam.clip_es import clip_es_refine

    att = [[3, 1, 0, 1], [1, 2, 1, 0], [0, 1, 1, 2], [2, 0, 1, 1]]
    a = [[Q(v) for v in row] for row in att]
    for _ in range(3):
        cols = [sum(a[i][j] for i in range(4)) for j in range(4)]
        a = [[a[i][j] / cols[j] for j in range(4)] for i in range(4)]
        rows = [sum(a[i]) for i in range(4)]
        a = [[a[i][j] / rows[i] for j in range(4)] for i in range(4)]
    s = [[(a[i][j] + a[j][i]) / 2 for j in range(4)] for i in range(4)]
    s2 = [[sum(s[i][k] * s[k][j] for k in range(4)) for j in range(4)] for i in range(4)]
    raw = [[[0.0, 4.0], [2.0, 1.0]]]  # 2×2 grid, one class; the box threshold keeps the patches above 0.4·max
    out = clip_es_refine(_output(raw, att), box_thresh=0.4)
    norm = out["cam_norm"].ravel().astype(np.float64)
    mask = out["box_mask"].ravel()
    # the reference boxes: bounding rectangles clipped to W−1 / H−1, so on a 2×2 grid only patch (0, 0) can be in
    assert mask.tolist() == [1.0, 0.0, 0.0, 0.0]
    expected = [float(sum(s2[i][j] * Q(float(norm[j])) * int(mask[j]) for j in range(4))) for i in range(4)]
    np.testing.assert_allclose(out["cam_refined"].ravel(), expected, rtol=1e-6)


def test_softmax_runs_over_the_tagged_classes_and_the_background_only() -> None:
    from tag2mask.cam.clip_es import clip_es_model
    from tag2mask.models.tiny import tiny_clip

    clip = tiny_clip(seed=1, image_size=64)
    text = torch.nn.functional.normalize(torch.randn(5, clip.text_projection.shape[1],
                                                     generator=torch.Generator().manual_seed(0)), dim=-1)
    model = clip_es_model(clip, num_fg=3, pos_embed_f16=False)
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    out = model(x, torch.tensor([[0.0, 1.0, 0.0]]), text_features=text, compute_cam=False)
    logits, probs = out.logits[0].double(), out.probs[0].double()
    # absent classes 0 and 2 are never in the denominator: 0 probability, and class 1 + the 2 bg sum to 1
    allowed = logits[[1, 3, 4]]
    expected = torch.exp(allowed - allowed.max()) / torch.exp(allowed - allowed.max()).sum()
    assert probs[0] == 0 and probs[2] == 0
    torch.testing.assert_close(probs[[1, 3, 4]], expected, rtol=1e-6, atol=1e-7)
