"""Mixed precision that is right, proven on the CPU with bfloat16 autocast (the same code path as CUDA's):
one classification step and one segmentation step (the CAM loss, through Softmax-GradCAM's own gradient) under
autocast against float32 from the same state; the CAM stage and a stage-II step under autocast stay finite."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tag2mask import amp
from tag2mask.cam import GradCAMClip
from tag2mask.config import load_config
from tag2mask.cam.image import clip_normalise
from tag2mask.data import make_synthetic_dataset, open_dataset
from tag2mask.models.clip import load_clip
from tag2mask.stages.common import build_prompt_learner
from tag2mask.prompt_training.loop import build_loss_module, loss_and_weight


@pytest.fixture(scope="module")
def batch(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    root = make_synthetic_dataset(tmp_path_factory.mktemp("amp") / "shapes", n_train=4, n_val=1, size=(96, 128))
    ds = open_dataset("synthetic", root, "train")
    images = clip_normalise(np.stack([ds.load_image(i) for i in ds.ids]))
    fg = torch.from_numpy(np.stack([ds.label_vector(i) for i in ds.ids]).astype(np.float32))
    masks = torch.from_numpy(np.stack([ds.load_mask(i) for i in ds.ids]).astype(np.int64))  # the seeds stand-in
    return ds.class_names, images, fg, masks


def _step(task: str, batch, autocast: bool) -> tuple[torch.Tensor, torch.Tensor, float]:  # noqa: ANN001
    """Context gradient, CAMs and loss of one step from the same initial state, in float32 or under autocast."""
    names, images, fg, masks = batch
    config = load_config("demo")
    cfg = getattr(config.train, task)
    clip = load_clip("tiny-synthetic")
    learner = build_prompt_learner(clip, config, task, names)  # seeded: the same initial context both times
    model = GradCAMClip(clip, learner, softmax=config.cams.softmax, att_layers=config.cams.att_layers)
    needs_cam = cfg.loss == "cal"  # as the training loop: the cls step computes no CAM
    with amp.autocast("cpu", torch.bfloat16, autocast):
        out = model(images, fg, create_graph=needs_cam, compute_cam=needs_cam)
    loss, _, _ = loss_and_weight(cfg, build_loss_module(cfg), out, fg, masks)
    loss.backward()
    with amp.autocast("cpu", torch.bfloat16, autocast):
        cams = model(images, fg).cam.detach()  # the task's CAMs from the same state, as the CAM stage makes them
    return learner.ctx.grad.detach().clone(), cams.float(), float(loss.detach())


@pytest.mark.parametrize("task", ["cls", "seg"])
def test_a_step_under_bfloat16_autocast_matches_float32(batch, task: str) -> None:  # noqa: ANN001
    g32, cam32, loss32 = _step(task, batch, autocast=False)
    g16, cam16, loss16 = _step(task, batch, autocast=True)
    assert torch.isfinite(g16).all() and float(g32.norm()) > 0
    cosine = float(F.cosine_similarity(g32.flatten(), g16.flatten(), dim=0))
    assert cosine >= 0.99, cosine
    assert float((cam16 - cam32).abs().max()) <= 2e-2 * float(cam32.abs().max())
    assert abs(loss16 - loss32) <= 2e-2 * abs(loss32)


def test_the_cam_gradient_runs_in_float32_under_autocast(batch) -> None:  # noqa: ANN001
    names, images, fg, _ = batch
    config = load_config("demo")
    clip = load_clip("tiny-synthetic")
    model = GradCAMClip(clip, build_prompt_learner(clip, config, "seg", names))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(images, fg, create_graph=True)
    assert out.cam.dtype == torch.float32 and out.logits.dtype == torch.float32 and out.probs.dtype == torch.float32


def test_the_cam_stage_under_autocast_is_finite(batch) -> None:  # noqa: ANN001
    from tag2mask.stages.cams import cam_one

    names, _, fg, _ = batch
    config = load_config("demo")
    clip = load_clip("tiny-synthetic")
    model = GradCAMClip(clip, build_prompt_learner(clip, config, "seg", names), att_layers=config.cams.att_layers)
    image = (np.random.default_rng(0).random((96, 128, 3)) * 255).astype(np.uint8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        arrays = cam_one(model, image, np.flatnonzero(fg[0].numpy()), config, "seg", "cpu")
    assert all(np.isfinite(arrays[k]).all() for k in ("cam", "cam_raw", "logits"))


def test_a_stage_two_step_under_autocast_is_finite() -> None:
    pytest.importorskip("segmentation_models_pytorch")
    from tag2mask.segmenters.deeplab import build_deeplabv3plus

    torch.manual_seed(0)
    model = build_deeplabv3plus(3, "resnet18", None, 16)
    model.train()
    images = torch.randn(2, 3, 64, 64)
    labels = torch.randint(0, 3, (2, 64, 64))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model.loss(images, labels)
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert torch.isfinite(loss) and grads and all(torch.isfinite(g).all() for g in grads)


def test_amp_helpers() -> None:
    assert amp.amp_dtype("bfloat16", "cpu") == torch.bfloat16 and amp.amp_dtype("float16", "cpu") == torch.float16
    assert amp.grad_scaler("cpu", torch.float16, True) is None  # no CUDA: no scaler
    assert amp.grad_scaler("cuda", torch.bfloat16, True) is None  # bfloat16 never needs one
    assert amp.grad_scaler("cuda", torch.float16, False) is None
    with amp.autocast("cpu", torch.bfloat16, True):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    with amp.autocast("cpu", torch.bfloat16, False):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
