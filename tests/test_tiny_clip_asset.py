"""The packaged tiny CLIP of the offline demo ("tiny-synthetic"): it loads, is small, and knows the shapes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from open_clip.transformer import QuickGELU
from PIL import Image

from tag2mask.cam.gradcam import GradCAMClip
from tag2mask.cam.image import clip_normalise
from tag2mask.data.synthetic import SYNTHETIC_CLASSES, make_synthetic_dataset
from tag2mask.errors import MissingWeightsError
from tag2mask.models.clip import is_safetensors, load_clip
from tag2mask.models.prompts import PromptLearner
from tag2mask.models.weights import PACKAGED_WEIGHTS, packaged_weight, resolve_weight

BG_NAMES = ["background", "ground", "wall", "texture"]


@pytest.fixture(scope="module")
def clip():
    return load_clip("tiny-synthetic")


def test_asset_file_and_metadata() -> None:
    w = packaged_weight("tiny-synthetic", "clip")
    assert w is not None and w in PACKAGED_WEIGHTS
    path = resolve_weight("tiny-synthetic")
    assert path == w.path and path.is_file() and is_safetensors(path)
    assert path.stat().st_size < 10 * 1024 * 1024
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["name"] == "tiny-synthetic" and meta["file"] == path.name
    for key in ("architecture", "training", "date"):
        assert key in meta
    assert meta["training"]["data"]["seed"] != 0  # not the demo's dataset
    with pytest.raises(MissingWeightsError):
        resolve_weight("tiny-synthetic", kind="sam")  # a CLIP, not a SAM


def test_loads_frozen_float32_quickgelu(clip) -> None:
    assert not clip.training
    assert all(p.dtype == torch.float32 and not p.requires_grad for p in clip.parameters())
    blocks = [*clip.visual.transformer.resblocks, *clip.transformer.resblocks]
    assert all(isinstance(b.mlp.gelu, QuickGELU) for b in blocks)
    assert clip.visual.conv1.kernel_size == (8, 8)  # patch 8: a 12×16 grid on the demo's 96×128 images
    assert clip.visual.positional_embedding.shape[0] == 1 + 12 * 12  # trained at 96×96, resized at inference
    assert clip.logit_scale.exp().item() == pytest.approx(100.0, rel=1e-3)


def test_prompts_rank_the_right_class_first(clip, tmp_path: Path) -> None:
    """Zero-shot (the PromptLearner's random initial context): on fresh synthetic images (not the training seed,
    not the demo's) the top foreground logit is one of the image's tags far more often than chance (~1.4 / 5)."""
    root = make_synthetic_dataset(tmp_path, n_train=12, n_val=0, size=(96, 128), seed=12345)
    rows = [line.split(",") for line in (root / "train.csv").read_text().splitlines()[1:]]
    images = clip_normalise(np.stack([np.asarray(Image.open(root / "images" / name)) for name, _ in rows]))
    labels = torch.zeros(len(rows), len(SYNTHETIC_CLASSES))
    for i, (_, tags) in enumerate(rows):
        labels[i, [SYNTHETIC_CLASSES.index(t) for t in tags.split(";")]] = 1.0
    learner = PromptLearner(clip, SYNTHETIC_CLASSES, BG_NAMES, n_ctx=16, seed=0)
    with torch.no_grad():
        out = GradCAMClip(clip, learner)(images, labels, compute_cam=False)
    top = out.fg_logits.argmax(dim=1)
    hits = labels[torch.arange(len(rows)), top].sum().item()
    assert hits >= 10, f"top class is a tag on only {hits:.0f}/{len(rows)} images"
