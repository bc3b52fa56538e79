"""Softmax-GradCAM, the CAM-ready CLIP forward and the prompt learner.

The reference case was computed by the authors' implementation on a random-weight CLIP ViT-B/16 in the OpenAI
key layout; ``tests/data/make_random_clip.py`` recreates exactly those weights (checked by digest).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tag2mask.cam.gradcam import GradCAMClip, masked_softmax
from tag2mask.models.prompts import PromptLearner

DATA = Path(__file__).parent / "data"
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _normalise(img_uint8: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(img_uint8).float().permute(2, 0, 1)[None] / 255
    return (x - torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(CLIP_STD).view(1, 3, 1, 1)


def test_gradcam_matches_the_reference_implementation(random_vit_b16: torch.nn.Module) -> None:
    z = np.load(DATA / "gradcam_cls_img0.npz")
    meta = json.loads((DATA / "gradcam_cls_img0.json").read_text(encoding="utf-8"))
    names = meta["model"]["classnames"]
    learner = PromptLearner(random_vit_b16, names[:20], names[20:], n_ctx=16, class_specific=False, name_position="end")
    with torch.no_grad():
        learner.ctx.copy_(torch.from_numpy(z["ctx"]))
    model = GradCAMClip(random_vit_b16, learner, softmax="reference")
    out = model(_normalise(z["img_uint8_rgb"]), torch.from_numpy(z["fg_cls_lb"]), need_attention=True)

    assert out.pairs.tolist() == [[0, 11], [0, 14]] and out.grid == (14, 18)
    np.testing.assert_allclose(out.logits.detach().numpy(), z["logits"], rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(out.probs.detach().numpy(), z["sm_logits"], rtol=1e-5, atol=1e-6)
    cam = out.cam.detach().numpy()
    scale = np.abs(z["pos_cam"]).max()
    assert np.abs(cam - z["pos_cam"]).max() < 1e-4 * scale
    np.testing.assert_allclose(out.att[0].detach().numpy(), z["att_merged8"], rtol=1e-4, atol=1e-8)


# ---------------------------------------------------------------------------------------------------------------
# Tiny CLIP: properties that must hold for any weights
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny() -> torch.nn.Module:
    from tag2mask.models.tiny import tiny_clip

    return tiny_clip(seed=3, image_size=64)


def _learner(model: torch.nn.Module, **kw) -> PromptLearner:
    return PromptLearner(model, ["cat", "dog", "traffic light"], ["sky", ""], n_ctx=4, seed="真", **kw)


def test_masked_softmax_by_hand() -> None:
    logits = torch.tensor([[2.0, 5.0, 1.0, 0.0]])
    allowed = torch.tensor([[True, False, True, True]])
    e = np.exp(np.array([2.0, 1.0, 0.0]) - 5.0)  # shifted by the max over ALL logits (5, masked)
    ref = masked_softmax(logits, allowed, "reference")[0].numpy()
    np.testing.assert_allclose(ref[[0, 2, 3]], e / (e.sum() + 1e-5), rtol=1e-6)
    assert ref[1] == 0.0
    clean = masked_softmax(logits, allowed, "clean")[0].numpy()
    np.testing.assert_allclose(clean[[0, 2, 3]], np.exp([2.0, 1.0, 0.0]) / np.exp([2.0, 1.0, 0.0]).sum(), rtol=1e-6)
    assert clean[1] == 0.0 and abs(clean.sum() - 1) < 1e-6 and ref.sum() < 1


def test_batched_cams_equal_one_gradient_per_pair(tiny: torch.nn.Module) -> None:
    torch.manual_seed(0)
    model = GradCAMClip(tiny, _learner(tiny))
    images = torch.randn(3, 3, 32, 48)
    labels = torch.tensor([[1, 0, 1], [0, 0, 0], [1, 1, 1]], dtype=torch.float32)
    out = model(images, labels)
    assert out.pairs.tolist() == [[0, 0], [0, 2], [2, 0], [2, 1], [2, 2]]
    assert out.cam.shape == (5, 2, 3) and out.logits.shape == (3, 5) and out.fg_logits.shape == (3, 3)
    # the same CAMs, one plain autograd call per positive pair
    from tag2mask.models.clip_cam import vit_forward

    for k, (n, c) in enumerate(out.pairs.tolist()):
        vision = vit_forward(tiny.visual, images)
        f = torch.nn.functional.normalize(vision.embedding, dim=-1)
        t = torch.nn.functional.normalize(model.text_features(), dim=-1)
        logits = tiny.logit_scale.exp() * f @ t.t()
        allowed = torch.ones_like(logits, dtype=torch.bool)
        allowed[:, :3] = labels.bool()
        p = masked_softmax(logits, allowed)
        (g,) = torch.autograd.grad(p[n, c], vision.activation)
        expected = (g[n, 1:].mean(0) * vision.activation.detach()[n, 1:]).sum(-1)
        torch.testing.assert_close(out.cam[k].reshape(-1), expected, rtol=1e-4, atol=1e-7)
        assert torch.all(g[[i for i in range(3) if i != n]] == 0)  # images do not interact


def test_no_positive_gives_no_cam_and_probs_still_defined(tiny: torch.nn.Module) -> None:
    model = GradCAMClip(tiny, _learner(tiny))
    out = model(torch.randn(2, 3, 32, 32), torch.zeros(2, 3))
    assert out.cam.shape == (0, 2, 2) and out.pairs.shape == (0, 2)
    assert torch.all(out.probs[:, :3] == 0) and torch.all(out.probs[:, 3:] > 0)
    skipped = model(torch.randn(1, 3, 32, 32), torch.ones(1, 3), compute_cam=False)
    assert skipped.cam.shape[0] == 0 and skipped.pairs.shape[0] == 3


def test_create_graph_makes_cams_differentiable_in_the_context(tiny: torch.nn.Module) -> None:
    learner = _learner(tiny)
    model = GradCAMClip(tiny, learner)
    images, labels = torch.randn(2, 3, 32, 32), torch.tensor([[1.0, 0, 0], [0, 1, 1]])
    frozen = model(images, labels)
    assert not frozen.cam.requires_grad
    out = model(images, labels, create_graph=True)
    (grad,) = torch.autograd.grad(out.cam.square().sum(), learner.ctx)
    assert grad.shape == learner.ctx.shape and grad.abs().sum() > 0
    assert all(p.grad is None for p in tiny.parameters())


def test_bad_inputs_are_rejected(tiny: torch.nn.Module) -> None:
    model = GradCAMClip(tiny, _learner(tiny))
    with pytest.raises(ValueError, match="multiple of the patch size"):
        model(torch.randn(1, 3, 30, 32), torch.ones(1, 3))
    with pytest.raises(ValueError, match="fg_labels must be 1×3"):
        model(torch.randn(1, 3, 32, 32), torch.ones(1, 4))


def test_positional_embedding_resize() -> None:
    from tag2mask.models.clip_cam import resize_pos_embed

    pos = torch.randn(1 + 4 * 4, 8)
    assert resize_pos_embed(pos, (4, 4)) is pos
    out = resize_pos_embed(pos, (2, 6))
    assert out.shape == (13, 8) and torch.equal(out[0], pos[0])
    grid = pos[1:].reshape(4, 4, 8).permute(2, 0, 1)[None]
    expected = torch.nn.functional.interpolate(grid, size=(2, 6), mode="bilinear", align_corners=False)
    torch.testing.assert_close(out[1:], expected[0].permute(1, 2, 0).reshape(12, 8))


def test_attention_rows_are_distributions(tiny: torch.nn.Module) -> None:
    out = GradCAMClip(tiny, _learner(tiny), att_layers=8)(torch.randn(2, 3, 32, 48), torch.ones(2, 3), need_attention=True)
    assert out.att.shape == (2, 6, 6) and not out.att.requires_grad
    assert torch.all(out.att >= 0) and torch.all(out.att.sum(-1) <= 1 + 1e-5)  # CLS column dropped


def test_full_size_vit_b16_cam_shapes_for_a_voc_image(random_vit_b16: torch.nn.Module) -> None:
    from tag2mask.cam.image import prepare_image

    learner = PromptLearner(random_vit_b16, ["cat", "dog", "person"], ["sky", "grass"], n_ctx=16)
    model = GradCAMClip(random_vit_b16, learner)
    x = prepare_image(np.random.default_rng(0).integers(0, 256, (375, 500, 3), dtype=np.uint8))
    out = model(x, torch.tensor([[1.0, 0.0, 1.0]]), need_attention=True)
    assert out.grid == (24, 32) and out.cam.shape == (2, 24, 32)  # 500×375 → 512×384 → 32×24 patches
    assert out.att.shape == (1, 768, 768) and out.logits.shape == (1, 5)


def test_second_order_gradient_matches_finite_differences() -> None:
    """d(loss(CAM))/d(ctx) through Softmax-GradCAM (create_graph) against central differences, in float64."""
    from tag2mask.models.tiny import tiny_clip

    torch.manual_seed(0)
    clip = tiny_clip(seed=5, width=64, heads=1, text_width=64, text_heads=1, image_size=32).double()
    learner = PromptLearner(clip, ["cat", "dog"], ["sky"], n_ctx=2, seed=3, ctx_std=0.5).double()
    model = GradCAMClip(clip, learner)
    images = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    labels = torch.tensor([[1.0, 1.0], [0.0, 1.0]], dtype=torch.float64)
    weights = torch.randn(3, 2, 2, dtype=torch.float64)

    def loss() -> torch.Tensor:
        return (model(images, labels, create_graph=True).cam * weights).sum()

    (grad,) = torch.autograd.grad(loss(), learner.ctx)
    eps = 1e-6
    numeric = torch.zeros_like(grad)
    flat = learner.ctx.data.view(-1)
    for i in range(flat.numel()):
        old = flat[i].item()
        flat[i] = old + eps
        up = loss().item()
        flat[i] = old - eps
        down = loss().item()
        flat[i] = old
        numeric.view(-1)[i] = (up - down) / (2 * eps)
    assert grad.abs().max() > 0
    torch.testing.assert_close(grad, numeric, rtol=1e-5, atol=1e-9 * float(numeric.abs().max()) + 1e-12)
