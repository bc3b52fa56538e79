"""Softmax-GradCAM, the CAM-ready CLIP forward and the prompt learner.

The reference case was computed by the authors' implementation on a random-weight CLIP ViT-B/16 in the OpenAI
key layout; ``tests/data/make_random_clip.py`` recreates exactly those weights (checked by digest).
"""

from __future__ import annotations

import importlib.util
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


@pytest.fixture(scope="module")
def random_vit_b16(tmp_path_factory: pytest.TempPathFactory) -> torch.nn.Module:
    from open_clip.model import build_model_from_openai_state_dict

    spec = importlib.util.spec_from_file_location("make_random_clip", DATA / "make_random_clip.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    path = module.ensure(str(tmp_path_factory.mktemp("clip") / "random_vit_b16.pt"))
    state = torch.load(path, map_location="cpu", weights_only=True)
    return build_model_from_openai_state_dict(state, quick_gelu=True, cast_dtype=None).float().eval()


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
