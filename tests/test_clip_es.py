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
    from tag2mask.data.augment import clip_normalise

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
