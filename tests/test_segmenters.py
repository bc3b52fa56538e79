"""Stage II with DeepLabV3+: augmentation, network wrapper, weight files, inference, prediction files, recipes and
the training loop's pure helpers (resnet18 encoders, small images, CPU)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

pytest.importorskip("segmentation_models_pytorch")

from tag2mask.errors import ConfigError, DataError, MissingWeightsError, Tag2MaskError  # noqa: E402
from tag2mask.models import weights as weights_mod  # noqa: E402
from tag2mask.models.weights import (  # noqa: E402
    find_weights,
    hf_hub_cache,
    known_weight,
    library_cache_file,
    resolve_weight,
    torch_hub_checkpoints,
)
from tag2mask.segmenters.augment import (  # noqa: E402
    normalise_image,
    pad_pair,
    photometric_distortion,
    random_crop,
    rescale_size,
    train_sample,
)
from tag2mask.segmenters.base import IMAGENET_MEAN, IMAGENET_STD, normalise  # noqa: E402
from tag2mask.models.checkpoint import read_state_dict  # noqa: E402
from tag2mask.segmenters.deeplab import (  # noqa: E402
    DeepLabV3PlusSegmenter,
    build_deeplabv3plus,
    load_encoder_weights,
)
from tag2mask.segmenters.inference import pad_to_multiple, predict_probabilities  # noqa: E402
from tag2mask.segmenters.loop import build_optimizer, load_weights, poly_lr, save_weights  # noqa: E402
from tag2mask.segmenters.predictions import (  # noqa: E402
    keep_classes,
    load_prediction,
    present_classes,
    prediction_labels,
    save_prediction,
)
from tag2mask.segmenters.recipes import (  # noqa: E402
    SegmenterRecipe,
    backbone_weight_name,
    default_recipe,
    load_recipe,
    recipe_from_dict,
    total_iterations,
)

K = 6  # classes of the test networks (background + 5)


@pytest.fixture(autouse=True)
def _isolated_library_caches(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """torch hub and Hugging Face caches point at empty folders, so no user file is ever found."""
    base = tmp_path_factory.mktemp("library_caches")
    monkeypatch.setenv("TORCH_HOME", str(base / "torch"))
    monkeypatch.setenv("HF_HUB_CACHE", str(base / "hf"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(base / "xdg"))
    monkeypatch.delenv("HF_HOME", raising=False)


def deeplab(seed: int = 0, classes: int = K, encoder: str = "resnet18") -> DeepLabV3PlusSegmenter:
    torch.manual_seed(seed)
    return build_deeplabv3plus(classes, encoder, weights=None)


@pytest.fixture(scope="module")
def model() -> DeepLabV3PlusSegmenter:
    """One random resnet18 DeepLabV3+ shared by the tests that do not change its parameters."""
    return deeplab(0)


def randomised_resnet_state(arch: str, seed: int) -> dict[str, torch.Tensor]:
    """A torchvision ResNet state dict (with ``fc.*``) whose batch-norm buffers are not the fresh-init values."""
    import torchvision

    torch.manual_seed(seed)
    state = getattr(torchvision.models, arch)().state_dict()
    g = torch.Generator().manual_seed(seed)
    for k, v in state.items():
        if k.endswith("running_mean"):
            state[k] = torch.randn(v.shape, generator=g)
        elif k.endswith("running_var"):
            state[k] = torch.rand(v.shape, generator=g) + 0.5
        elif k.endswith("num_batches_tracked"):
            state[k] = torch.tensor(7)
    return state


# ========================================================================================== augment: rescale_size


@pytest.mark.parametrize(
    ("h", "w", "base", "ratio", "expected"),
    [
        # 375×500, base (2048, 512), r = 1: factor = min(2048/500 = 4.096, 512/375 = 1.3653) = 512/375
        #   → h = 375·512/375 = 512, w = 500·512/375 = 682.67 → 683
        (375, 500, (2048, 512), 1.0, (512, 683)),
        # r = 0.5: factor = min(1024/500 = 2.048, 256/375 = 0.6827) = 256/375 → h = 256, w = 341.33 → 341
        (375, 500, (2048, 512), 0.5, (256, 341)),
        # r = 2: factor = min(4096/500 = 8.192, 1024/375 = 2.7307) = 1024/375 → h = 1024, w = 1365.33 → 1365
        (375, 500, (2048, 512), 2.0, (1024, 1365)),
        # a very wide 100×3000 image: factor = min(2048/3000 = 0.6827, 512/100 = 5.12) = 2048/3000, the long side
        #   limits → h = 100·0.68267 = 68.27 → 68, w = 2048
        (100, 3000, (2048, 512), 1.0, (68, 2048)),
        # base (0, 0): the factor is the ratio itself: 100×200 × 0.75 → 75×150
        (100, 200, (0, 0), 0.75, (75, 150)),
        (100, 200, [0, 0], 1.0, (100, 200)),
        # rounding is half up (int(x + 0.5)), not Python's half-to-even: 3×5 × 0.5 = 1.5×2.5 → 2×3
        (3, 5, (0, 0), 0.5, (2, 3)),
        # never below one pixel: 1×1 × 0.1 → 0.1 → 1
        (1, 1, (0, 0), 0.1, (1, 1)),
    ],
)
def test_rescale_size_hand_values(h: int, w: int, base: Any, ratio: float, expected: tuple[int, int]) -> None:
    assert rescale_size(h, w, base, ratio) == expected


# ========================================================================================== augment: random_crop


def coordinate_image(h: int, w: int) -> np.ndarray:
    """``H×W×2`` int32: pixel (y, x) holds (y, x), so a crop tells where it was taken."""
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack([yy, xx], axis=-1).astype(np.int32)


def test_random_crop_window_stays_inside_the_image() -> None:
    rng = np.random.default_rng(0)
    sizes = rng.integers(5, 90, size=(40, 2))
    for h, w in sizes:
        image = coordinate_image(int(h), int(w))
        label = np.zeros((h, w), np.uint8)
        crop_img, crop_lab = random_crop(image, label, 32, 1.0, rng)
        ch, cw = min(32, h), min(32, w)
        assert crop_img.shape == (ch, cw, 2) and crop_lab.shape == (ch, cw)
        y0, x0 = crop_img[0, 0]
        assert 0 <= y0 <= h - ch and 0 <= x0 <= w - cw
        np.testing.assert_array_equal(crop_img, image[y0:y0 + ch, x0:x0 + cw])


def first_windows(seed: int, n: int, margin: int) -> list[tuple[int, int]]:
    """The first ``n`` (y0, x0) draws of a window with ``margin + 1`` positions per axis, from ``default_rng(seed)``."""
    rng = np.random.default_rng(seed)
    return [(int(rng.integers(0, margin + 1)), int(rng.integers(0, margin + 1))) for _ in range(n)]


def test_random_crop_cat_max_ratio_retries_until_no_class_dominates() -> None:
    # 64×64 label, class 0 everywhere but a 20×20 class-1 square at the top left; 32 crop → y0, x0 ∈ 0..32.
    label = np.zeros((64, 64), np.uint8)
    label[:20, :20] = 1
    image = coordinate_image(64, 64)
    windows = first_windows(0, 4, 32)
    # numpy's PCG64 stream for seed 0 (checked by hand below):
    assert windows == [(28, 21), (16, 8), (10, 1), (2, 0)]
    # (28, 21): no overlap with the square → one class only → rejected
    # (16, 8):  class 1 = (20−16)·(20−8) = 48 px, class 0 = 976 → 976/1024 = 0.953 ≥ 0.75 → rejected
    # (10, 1):  class 1 = 10·19 = 190 px, class 0 = 834 → 0.814 ≥ 0.75 → rejected
    # (2, 0):   class 1 = 18·20 = 360 px, class 0 = 664 → 0.648 < 0.75 → kept
    crop_img, crop_lab = random_crop(image, label, 32, 0.75, np.random.default_rng(0))
    assert tuple(crop_img[0, 0]) == (2, 0)
    ids, counts = np.unique(crop_lab, return_counts=True)
    assert ids.tolist() == [0, 1] and counts.tolist() == [664, 360]
    np.testing.assert_array_equal(crop_lab, label[2:34, 0:32])

    # cat_max_ratio 1.0: no check, the first draw of the same seed is taken (one class only)
    crop_img, crop_lab = random_crop(image, label, 32, 1.0, np.random.default_rng(0))
    assert tuple(crop_img[0, 0]) == (28, 21)
    assert np.unique(crop_lab).tolist() == [0]


def test_random_crop_ignore_pixels_do_not_count_and_the_eleventh_window_is_the_fallback() -> None:
    # Top half ignore, bottom half class 0: only one real class, so no window can pass the check; after 10
    # checked windows MMSeg draws an 11th and keeps it unchecked. If 255 counted as a class, window 2 of seed 0 ((16, 8): 16 rows of 255, 16 rows of 0, a
    # 50/50 split) would have been accepted.
    label = np.zeros((64, 64), np.uint8)
    label[:32] = 255
    image = coordinate_image(64, 64)
    windows = first_windows(0, 11, 32)
    assert windows[1] == (16, 8)
    crop_img, _ = random_crop(image, label, 32, 0.75, np.random.default_rng(0))
    assert tuple(crop_img[0, 0]) == windows[10]


# ============================================================================== augment: padding and normalising


def test_pad_pair_pads_bottom_right_with_zero_and_ignore() -> None:
    image = np.arange(3 * 2 * 3, dtype=np.float32).reshape(3, 2, 3) + 1.0
    label = np.array([[0, 1, 2], [3, 4, 5]], np.int64)
    img, lab = pad_pair(image, label, 4)
    assert img.shape == (3, 4, 4) and lab.shape == (4, 4)
    np.testing.assert_array_equal(img[:, :2, :3], image)
    np.testing.assert_array_equal(lab[:2, :3], label)
    assert np.all(img[:, 2:, :] == 0) and np.all(img[:, :, 3:] == 0)
    assert np.all(lab[2:, :] == 255) and np.all(lab[:, 3:] == 255)
    # already large enough: unchanged
    same_img, same_lab = pad_pair(image, label, 2)
    np.testing.assert_array_equal(same_img, image)
    np.testing.assert_array_equal(same_lab, label)


def test_normalise_image_hand_values() -> None:
    mean_pixel = np.array([[[123.675, 116.28, 103.53]]], np.float64)  # 1×1×3: the mean itself → 0
    out = normalise_image(mean_pixel)
    assert out.shape == (3, 1, 1) and out.dtype == np.float32
    np.testing.assert_allclose(out[:, 0, 0], 0.0, atol=1e-6)
    # (255, 0, 128): (255 − 123.675)/58.395 = 2.248908, (0 − 116.28)/57.12 = −2.035714,
    # (128 − 103.53)/57.375 = 0.426492; the layout becomes channel-first
    img = np.zeros((2, 3, 3), np.uint8)
    img[1, 2] = (255, 0, 128)
    out = normalise_image(img)
    assert out.shape == (3, 2, 3)
    np.testing.assert_allclose(out[:, 1, 2], [2.248908, -2.035714, 0.426492], atol=1e-5)
    # the torch twin used by inference agrees
    torch_out = normalise(torch.from_numpy(img).permute(2, 0, 1))
    np.testing.assert_allclose(torch_out.numpy(), out, atol=1e-6)


# ========================================================================================== augment: train_sample


PALETTE = np.array([[20, 20, 20], [230, 40, 40], [40, 230, 40], [40, 40, 230]], np.uint8)


def block_scene() -> tuple[np.ndarray, np.ndarray]:
    """A 96×128 label map of four asymmetric blocks and an image whose colour is ``PALETTE[label]``."""
    label = np.zeros((96, 128), np.uint8)
    label[10:50, 8:40] = 1
    label[40:90, 70:120] = 2
    label[60:90, 10:50] = 3
    return PALETTE[label], label


def decode_colours(x: np.ndarray) -> np.ndarray:
    """``3×H×W`` normalised image → ``H×W`` index of the nearest palette colour."""
    rgb = x.transpose(1, 2, 0) * np.asarray(IMAGENET_STD, np.float32) + np.asarray(IMAGENET_MEAN, np.float32)
    d = ((rgb[:, :, None, :] - PALETTE[None, None].astype(np.float32)) ** 2).sum(-1)
    return d.argmin(-1)


def test_train_sample_shapes_dtypes_and_determinism() -> None:
    image, label = block_scene()
    a = train_sample(image, label, np.random.default_rng(5), crop_size=64, base_size=(0, 0))
    b = train_sample(image, label, np.random.default_rng(5), crop_size=64, base_size=(0, 0))
    c = train_sample(image, label, np.random.default_rng(6), crop_size=64, base_size=(0, 0))
    x, y = a
    assert x.shape == (3, 64, 64) and x.dtype == np.float32
    assert y.shape == (64, 64) and y.dtype == np.int64
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


def test_train_sample_keeps_image_and_label_aligned() -> None:
    image, label = block_scene()
    padded_seen = False
    for seed in range(12):
        x, y = train_sample(image, label, np.random.default_rng(seed), crop_size=64, base_size=(0, 0),
                            scale_range=(0.5, 2.0), photometric=False)
        pad = y == 255
        padded_seen |= bool(pad.any())
        # padding: image 0 (after normalisation), label 255
        assert np.all(x[:, pad] == 0)
        colour = decode_colours(x)
        valid = ~pad
        # away from region borders (a 5×5 neighbourhood of one label) colour and label agree exactly
        yp = np.pad(y, 2, constant_values=254)
        uniform = np.ones_like(valid)
        for dy in range(5):
            for dx in range(5):
                uniform &= yp[dy:dy + 64, dx:dx + 64] == y
        interior = valid & uniform
        assert interior.sum() > 0.3 * valid.sum()
        np.testing.assert_array_equal(colour[interior], y[interior])
        # everywhere (borders included) they agree on almost every pixel
        assert (colour[valid] == y[valid]).mean() > 0.9
    assert padded_seen, "some scale < 2/3 shrinks the 96-pixel side below the 64 crop and must pad"


def test_train_sample_flip_moves_image_and_label_together() -> None:
    # 40×60 image, class 1 in the left third; base (0, 0) and scale 1 keep the size, the 64 crop takes all of it,
    # so the output is the (possibly flipped) input, padded; photometric off → exact values.
    label = np.zeros((40, 60), np.uint8)
    label[:, :20] = 1
    image = PALETTE[label]
    image[5:10, 30:35] = (200, 100, 0)  # an asymmetric mark
    plain = normalise_image(image)
    flipped = normalise_image(np.ascontiguousarray(image[:, ::-1]))
    seen = set()
    for seed in range(16):
        x, y = train_sample(image, label, np.random.default_rng(seed), crop_size=64, base_size=(0, 0),
                            scale_range=(1.0, 1.0), photometric=False)
        assert np.all(y[40:] == 255) and np.all(y[:, 60:] == 255)
        assert np.all(x[:, 40:] == 0) and np.all(x[:, :, 60:] == 0)
        if np.array_equal(y[:40, :60], label):
            np.testing.assert_array_equal(x[:, :40, :60], plain)
            seen.add("plain")
        else:
            np.testing.assert_array_equal(y[:40, :60], label[:, ::-1])
            np.testing.assert_array_equal(x[:, :40, :60], flipped)
            seen.add("flipped")
    assert seen == {"plain", "flipped"}
    # flip=False never flips
    for seed in range(6):
        _, y = train_sample(image, label, np.random.default_rng(seed), crop_size=64, base_size=(0, 0),
                            scale_range=(1.0, 1.0), photometric=False, flip=False)
        np.testing.assert_array_equal(y[:40, :60], label)


def test_train_sample_refuses_mismatched_sizes() -> None:
    with pytest.raises(ValueError, match="differ"):
        train_sample(np.zeros((10, 12, 3), np.uint8), np.zeros((10, 11), np.uint8), np.random.default_rng(0))


# ================================================================================ augment: photometric_distortion


class FakeRng:
    """Returns queued ``integers`` draws (0 once the queue is empty) and queued ``uniform`` draws; logs the calls."""

    def __init__(self, integers: tuple[int, ...] | list[int] = (),
                 uniforms: tuple[float, ...] | list[float] = ()) -> None:
        self._ints = list(integers)
        self._unis = list(uniforms)
        self.uniform_calls: list[tuple[float, float]] = []

    def integers(self, *args: Any, **kwargs: Any) -> int:
        return self._ints.pop(0) if self._ints else 0

    def uniform(self, low: float, high: float) -> float:
        self.uniform_calls.append((low, high))
        return self._unis.pop(0)


def test_photometric_distortion_keeps_dtype_shape_and_changes_something() -> None:
    image = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    changed = 0
    for seed in range(8):
        out = photometric_distortion(image, np.random.default_rng(seed))
        assert out.dtype == np.uint8 and out.shape == image.shape
        changed += not np.array_equal(out, image)
    assert changed >= 6  # each seed skips all four steps with probability 1/16 only


def test_photometric_distortion_every_step_skipped_is_the_identity() -> None:
    image = np.random.default_rng(1).integers(0, 256, (9, 11, 3), dtype=np.uint8)
    rng = FakeRng()  # every coin 0
    out = photometric_distortion(image, rng)
    np.testing.assert_array_equal(out, image)
    assert rng.uniform_calls == []


def test_photometric_distortion_brightness_only() -> None:
    image = np.array([[[0, 100, 250]]], np.uint8)
    # coins: brightness yes, contrast_last no, contrast-first no, saturation no, hue no
    rng = FakeRng([1, 0, 0, 0, 0], [20.5])
    out = photometric_distortion(image, rng)
    assert rng.uniform_calls == [(-32, 32)]
    # 0 + 20.5 → 20 (truncated as MMSeg's astype(uint8)), 100 → 120, 250 → 270.5 clipped to 255
    assert out.tolist() == [[[20, 120, 255]]]
    out = photometric_distortion(image, FakeRng([1, 0, 0, 0, 0], [-20.5]))
    # 0 − 20.5 → clipped to 0, 100 → 79.5 → 79, 250 → 229.5 → 229
    assert out.tolist() == [[[0, 79, 229]]]


def test_photometric_distortion_contrast_last_only() -> None:
    image = np.array([[[10, 100, 200]]], np.uint8)
    # coins: brightness no, contrast_last yes, saturation no, hue no, final contrast yes; alpha 1.5
    rng = FakeRng([0, 1, 0, 0, 1], [1.5])
    out = photometric_distortion(image, rng)
    assert rng.uniform_calls == [(0.5, 1.5)]
    assert out.tolist() == [[[15, 150, 255]]]  # 200·1.5 = 300 clipped


# ==================================================================================================== deeplab


def test_deeplab_loss_is_finite_and_reaches_encoder_and_decoder(model: DeepLabV3PlusSegmenter) -> None:
    g = torch.Generator().manual_seed(0)
    images = torch.randn(2, 3, 32, 32, generator=g)
    labels = torch.randint(0, K, (2, 32, 32), generator=g)
    labels[:, :5] = 255
    model.train()
    model.zero_grad(set_to_none=True)
    loss = model(images, labels)  # forward = loss
    assert loss.dim() == 0 and torch.isfinite(loss)
    # random init over 6 classes: cross-entropy near log 6 = 1.79, certainly in (0.5, 5)
    assert 0.5 < float(loss.detach()) < 5.0
    loss.backward()
    params = dict(model.named_parameters())
    for name, p in params.items():
        assert p.grad is not None, name
    assert float(model.net.encoder.conv1.weight.grad.abs().sum()) > 0
    assert float(model.net.encoder.layer4[1].conv2.weight.grad.abs().sum()) > 0
    decoder = [p for n, p in params.items() if n.startswith("net.decoder.")]
    assert decoder and all(float(p.grad.abs().sum()) > 0 for p in decoder if p.dim() > 1)
    assert float(model.net.segmentation_head[0].weight.grad.abs().sum()) > 0
    model.zero_grad(set_to_none=True)


def test_deeplab_loss_is_mmseg_cross_entropy_over_all_pixels(model: DeepLabV3PlusSegmenter) -> None:
    model.eval()  # no dropout, batch norm on running statistics: the same input gives the same logits
    images = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = model.logits(images).double()
        labels = torch.full((1, 64, 64), 255, dtype=torch.int64)
        labels[0, 10, 20] = 3
        one = float(model.loss(images, labels))
        labels[0, 40, 7] = 0
        two = float(model.loss(images, labels))

    def ce(c: int, y: int, x: int) -> float:
        z = logits[0, :, y, x].tolist()
        return math.log(sum(math.exp(v) for v in z)) - z[c]

    # MMSeg's CrossEntropyLoss (avg_non_ignore=False): ignored pixels add 0 to the sum but count in the mean
    assert one == pytest.approx(ce(3, 10, 20) / (64 * 64), rel=1e-5)
    assert two == pytest.approx((ce(3, 10, 20) + ce(0, 40, 7)) / (64 * 64), rel=1e-5)


def test_deeplab_all_ignore_labels_give_zero_loss_with_zero_gradients(model: DeepLabV3PlusSegmenter) -> None:
    model.train()
    model.zero_grad(set_to_none=True)
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    loss = model.loss(images, torch.full((2, 32, 32), 255, dtype=torch.int64))
    assert float(loss.detach()) == 0.0
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert float(p.grad.abs().max()) == 0.0, name
    model.zero_grad(set_to_none=True)


def test_deeplab_probabilities_sum_to_one(model: DeepLabV3PlusSegmenter) -> None:
    model.eval()
    with torch.no_grad():
        prob = model.probabilities(torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3)))
    assert prob.shape == (2, K, 64, 64) and prob.dtype == torch.float32
    assert float(prob.min()) >= 0.0
    torch.testing.assert_close(prob.sum(1), torch.ones(2, 64, 64), atol=1e-5, rtol=0)


def test_deeplab_param_groups_split_encoder_and_head(model: DeepLabV3PlusSegmenter) -> None:
    groups = model.param_groups(0.01, 5e-4, 0.1)
    enc = {id(p) for p in model.net.encoder.parameters()}
    assert [g["lr"] for g in groups] == pytest.approx([0.001, 0.01])
    assert {id(p) for p in groups[0]["params"]} == enc
    assert not enc & {id(p) for p in groups[1]["params"]}
    assert len(groups[0]["params"]) + len(groups[1]["params"]) == len(list(model.parameters()))


# ------------------------------------------------------------------------------------------- deeplab: weight files


def encoder_matches(m: DeepLabV3PlusSegmenter, state: dict[str, torch.Tensor]) -> None:
    own = m.net.encoder.state_dict()
    assert set(own) == {k for k in state if not k.startswith("fc.")}
    for k, v in own.items():
        torch.testing.assert_close(v, state[k], rtol=0, atol=0, msg=k)


def test_build_deeplab_loads_torchvision_file_from_weights_folder() -> None:
    state = randomised_resnet_state("resnet18", 10)
    folder = weights_mod.weights_dir()
    folder.mkdir(parents=True)
    torch.save(state, folder / "resnet18-f37072fd.pth")
    m = build_deeplabv3plus(3, "resnet18", weights="resnet18")
    encoder_matches(m, state)
    # the file name works as the name too
    assert resolve_weight("resnet18-f37072fd.pth", "backbone") == folder / "resnet18-f37072fd.pth"


def test_build_deeplab_finds_the_file_in_torch_hub_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    hub = tmp_path / "th" / "hub" / "checkpoints"
    assert torch_hub_checkpoints() == hub
    hub.mkdir(parents=True)
    state = randomised_resnet_state("resnet18", 11)
    torch.save(state, hub / "resnet18-f37072fd.pth")
    assert resolve_weight("resnet18", "backbone") == hub / "resnet18-f37072fd.pth"
    encoder_matches(build_deeplabv3plus(3, "resnet18", weights="resnet18"), state)


def test_build_deeplab_loads_a_safetensors_path(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    state = randomised_resnet_state("resnet18", 12)
    path = tmp_path / "my_resnet18.safetensors"
    save_file(state, str(path))
    encoder_matches(build_deeplabv3plus(3, "resnet18", weights=str(path)), state)
    encoder_matches(build_deeplabv3plus(3, "resnet18", weights=path), state)


def test_resnet34_file_into_resnet18_is_refused(tmp_path: Path) -> None:
    # resnet34 holds every resnet18 tensor name with the same shape (plus layer1.2, layer2.2, layer2.3, …): the
    # extra blocks show that it is the wrong depth, so it must not load silently.
    path = tmp_path / "resnet34.pth"
    torch.save(randomised_resnet_state("resnet34", 13), path)
    with pytest.raises(Tag2MaskError, match="resnet34.pth"):
        build_deeplabv3plus(3, "resnet18", weights=str(path))


def test_resnet18_file_into_resnet34_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "small.pth"
    torch.save(randomised_resnet_state("resnet18", 14), path)
    encoder = DeepLabV3PlusSegmenter(3, "resnet34").net.encoder
    with pytest.raises(Tag2MaskError, match=r"small\.pth.*tensors missing"):
        load_encoder_weights(encoder, path)


def test_missing_resnet101_names_file_folder_and_url() -> None:
    with pytest.raises(MissingWeightsError) as info:
        build_deeplabv3plus(3, "resnet101", weights="resnet101")
    msg = str(info.value)
    assert "resnet101-63fe2227.pth" in msg
    assert str(weights_mod.weights_dir()) in msg
    assert "https://download.pytorch.org/models/resnet101-63fe2227.pth" in msg
    assert str(torch_hub_checkpoints()) in msg


def test_read_state_dict_unwraps_and_refuses(tmp_path: Path) -> None:
    sd = {"a.weight": torch.arange(6.0).reshape(2, 3), "b": torch.tensor([1, 2])}
    for key in ("state_dict", "model"):
        p = tmp_path / f"wrapped_{key}.pth"
        torch.save({key: sd, "epoch": 3}, p)
        out = read_state_dict(p)
        assert set(out) == set(sd)
        for k in sd:
            torch.testing.assert_close(out[k], sd[k], rtol=0, atol=0)
    plain = tmp_path / "plain.pt"
    torch.save(sd, plain)
    assert set(read_state_dict(str(plain))) == set(sd)
    from safetensors.torch import save_file

    save_file(sd, str(tmp_path / "plain.safetensors"))
    assert set(read_state_dict(tmp_path / "plain.safetensors")) == set(sd)
    not_tensors = tmp_path / "meta.pth"
    torch.save({"epoch": 3, "lr": 0.1}, not_tensors)
    with pytest.raises(Tag2MaskError, match=r"meta\.pth.*state dict"):
        read_state_dict(not_tensors)
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"this is not a torch file")
    with pytest.raises(Tag2MaskError, match=r"cannot read model weight file .*corrupt\.pth"):
        read_state_dict(corrupt)


# ================================================================================================ weights module


def test_hf_cache_lookup_for_swin(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    cache = tmp_path / "hf_hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    assert hf_hub_cache() == cache
    with pytest.raises(MissingWeightsError, match="microsoft/swin-large-patch4-window12-384-in22k"):
        resolve_weight("swin-l-in22k", "backbone")
    snap = cache / "models--microsoft--swin-large-patch4-window12-384-in22k" / "snapshots" / "abc"
    snap.mkdir(parents=True)
    (snap / "model.safetensors").write_bytes(b"x")
    assert resolve_weight("swin-l-in22k", "backbone") == snap / "model.safetensors"
    assert library_cache_file(known_weight("swin-l-in22k", "backbone")) == snap / "model.safetensors"
    # another repository's snapshot does not count
    assert library_cache_file(known_weight("swin-b-in22k", "backbone")) is None
    # a file in the tag2mask weights folder wins over the library cache
    folder = weights_mod.weights_dir()
    folder.mkdir(parents=True)
    (folder / "swin-large-patch4-window12-384-in22k.safetensors").write_bytes(b"y")
    assert resolve_weight("swin-l-in22k", "backbone") == folder / "swin-large-patch4-window12-384-in22k.safetensors"


def test_hf_cache_pytorch_model_bin_fallback(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("HF_HUB_CACHE")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hfhome"))
    assert hf_hub_cache() == tmp_path / "hfhome" / "hub"
    snap = tmp_path / "hfhome" / "hub" / "models--microsoft--swin-base-patch4-window12-384" / "snapshots" / "s1"
    snap.mkdir(parents=True)
    (snap / "pytorch_model.bin").write_bytes(b"x")
    assert resolve_weight("swin-b", "backbone") == snap / "pytorch_model.bin"


def test_cache_folders_fall_back_to_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("TORCH_HOME")
    monkeypatch.delenv("HF_HUB_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert torch_hub_checkpoints() == tmp_path / "xdg" / "torch" / "hub" / "checkpoints"
    assert hf_hub_cache() == tmp_path / "xdg" / "huggingface" / "hub"


def test_find_weights_lists_backbones(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    snap = tmp_path / "hf" / "models--microsoft--swin-large-patch4-window12-384-in22k" / "snapshots" / "abc"
    snap.mkdir(parents=True)
    (snap / "model.safetensors").write_bytes(b"x")
    rows = {name: (filename, path) for name, filename, path in find_weights()}
    for name in ("resnet101", "resnet50", "resnet18", "swin-b", "swin-b-in22k", "swin-l-in22k"):
        assert name in rows
    assert rows["resnet101"] == ("resnet101-63fe2227.pth", None)
    assert rows["swin-l-in22k"] == ("swin-large-patch4-window12-384-in22k.safetensors", snap / "model.safetensors")


# ================================================================================================== inference


IMAGE_50x70 = np.random.default_rng(7).integers(0, 256, (50, 70, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def plain_prediction(model: DeepLabV3PlusSegmenter) -> np.ndarray:
    model.eval()
    return predict_probabilities(model, IMAGE_50x70, base_size=(0, 0))


def test_pad_to_multiple_shapes_and_values() -> None:
    x = torch.randn(1, 3, 50, 70)
    y = pad_to_multiple(x)
    assert y.shape == (1, 3, 64, 96)
    torch.testing.assert_close(y[:, :, :50, :70], x, rtol=0, atol=0)
    assert float(y[:, :, 50:].abs().max()) == 0 and float(y[:, :, :, 70:].abs().max()) == 0
    assert pad_to_multiple(torch.zeros(2, 5, 64, 32)).shape == (2, 5, 64, 32)
    assert pad_to_multiple(torch.zeros(1, 1, 33, 1)).shape == (1, 1, 64, 32)
    assert pad_to_multiple(torch.zeros(1, 1, 50, 8), 7).shape == (1, 1, 56, 14)


def test_predict_probabilities_odd_size(model: DeepLabV3PlusSegmenter, plain_prediction: np.ndarray) -> None:
    prob = plain_prediction
    assert prob.shape == (K, 50, 70) and prob.dtype == np.float32
    np.testing.assert_allclose(prob.sum(0), 1.0, atol=1e-5)
    # the network saw the image padded at the bottom/right to 64×96 and was cropped back
    x = F.pad(torch.from_numpy(normalise_image(IMAGE_50x70))[None], (0, 26, 0, 14))
    with torch.no_grad():
        expected = model.probabilities(x)[0, :, :50, :70].numpy()
    np.testing.assert_allclose(prob, expected, atol=1e-5)


def test_predict_probabilities_rescales_and_returns_the_original_size(model: DeepLabV3PlusSegmenter) -> None:
    model.eval()
    image = IMAGE_50x70[:20, :30]
    # base (2048, 32): factor = min(2048/30, 32/20) = 1.6 → the network sees 32×48 (padded 32×64)
    prob = predict_probabilities(model, image, base_size=(2048, 32))
    assert prob.shape == (K, 20, 30)
    np.testing.assert_allclose(prob.sum(0), 1.0, atol=1e-5)


def test_predict_probabilities_multi_scale_is_the_mean(model: DeepLabV3PlusSegmenter,
                                                      plain_prediction: np.ndarray) -> None:
    model.eval()
    both = predict_probabilities(model, IMAGE_50x70, base_size=(0, 0), scales=[0.5, 1.0])
    half = predict_probabilities(model, IMAGE_50x70, base_size=(0, 0), scales=[0.5])
    assert half.shape == (K, 50, 70)
    assert not np.allclose(half, plain_prediction, atol=1e-4)  # the scales really differ
    np.testing.assert_allclose(both, (half + plain_prediction) / 2, atol=1e-5)


def test_predict_probabilities_flip_is_the_mean_with_the_flipped_image(model: DeepLabV3PlusSegmenter,
                                                                      plain_prediction: np.ndarray) -> None:
    model.eval()
    tta = predict_probabilities(model, IMAGE_50x70, base_size=(0, 0), flip=True)
    mirrored = predict_probabilities(model, np.ascontiguousarray(IMAGE_50x70[:, ::-1]), base_size=(0, 0))
    back = mirrored[:, :, ::-1]
    assert not np.allclose(back, plain_prediction, atol=1e-4)  # a random network is not flip-invariant
    np.testing.assert_allclose(tta, (plain_prediction + back) / 2, atol=1e-5)


# ================================================================================================ predictions


def hand_probabilities() -> np.ndarray:
    """4 channels (bg, classes 0, 1, 2) over 2×3 pixels; per pixel winner in the comment."""
    p = np.array(
        [
            # bg                  class 0             class 1             class 2
            [[0.7, 0.1, 0.1], [0.4, 0.2, 0.1]],
            [[0.1, 0.6, 0.1], [0.4, 0.3, 0.45]],
            [[0.1, 0.1, 0.2], [0.1, 0.3, 0.0]],
            [[0.1, 0.2, 0.6], [0.1, 0.2, 0.45]],
        ],
        np.float32,
    )
    # winners: (0,0) bg; (0,1) class 0; (0,2) class 2;
    #          (1,0) bg 0.4 ties class 0 0.4 → bg (first max); (1,1) class 0 0.3 ties class 1 0.3 → class 0;
    #          (1,2) class 0 0.45 ties class 2 0.45 → class 0. Class 1 never wins.
    return p


def test_present_keep_and_labels_hand_built() -> None:
    p = hand_probabilities()
    fg = present_classes(p)
    assert fg.dtype == np.int64 and fg.tolist() == [0, 2]
    kept = keep_classes(p, fg)
    assert kept.shape == (3, 2, 3)
    np.testing.assert_array_equal(kept, p[[0, 1, 3]])  # not renormalised
    labels = prediction_labels(kept, fg)
    assert labels.dtype == np.uint8
    assert labels.tolist() == [[0, 1, 3], [0, 1, 1]]
    # identical to the argmax over all classes
    np.testing.assert_array_equal(labels, np.argmax(p, axis=0))
    # all classes kept
    assert prediction_labels(p, np.array([0, 1, 2])).tolist() == [[0, 1, 3], [0, 1, 1]]
    # only background wins → no class
    assert present_classes(np.stack([np.ones((2, 2)), np.zeros((2, 2))])).tolist() == []


def test_prediction_file_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    prob = rng.random((3, 7, 9)).astype(np.float32)
    fg = np.array([4, 11])
    path = tmp_path / "img_001.npz"
    save_prediction(path, prob, fg)
    with np.load(path, allow_pickle=False) as z:
        assert z["prob"].dtype == np.float16 and z["fg_cls"].dtype == np.int64
    p2, fg2 = load_prediction(path)
    assert p2.dtype == np.float32 and fg2.dtype == np.int64
    assert fg2.tolist() == [4, 11]
    np.testing.assert_array_equal(p2, prob.astype(np.float16).astype(np.float32))
    np.testing.assert_allclose(p2, prob, atol=5e-4)  # float16: 11 significant bits


def test_save_prediction_refuses_wrong_shape(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="shape"):
        save_prediction(tmp_path / "a.npz", np.zeros((3, 4, 4), np.float32), np.array([1]))
    with pytest.raises(ValueError):
        save_prediction(tmp_path / "b.npz", np.zeros((2, 4), np.float32), np.array([1]))
    assert not (tmp_path / "a.npz").exists() and not (tmp_path / "b.npz").exists()


def test_load_prediction_malformed_files(tmp_path: Path) -> None:
    no_fg = tmp_path / "no_fg.npz"
    np.savez(no_fg, prob=np.zeros((2, 3, 3), np.float16))
    with pytest.raises(DataError, match="fg_cls"):
        load_prediction(no_fg)
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, prob=np.zeros((2, 3, 3), np.float16), fg_cls=np.array([1, 2], np.int64))
    with pytest.raises(DataError, match=r"\(2, 3, 3\)"):
        load_prediction(wrong)
    flat = tmp_path / "flat.npz"
    np.savez(flat, prob=np.zeros((2, 3), np.float16), fg_cls=np.array([1], np.int64))
    with pytest.raises(DataError):
        load_prediction(flat)
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not a zip")
    with pytest.raises(DataError, match="garbage.npz"):
        load_prediction(garbage)
    with pytest.raises(DataError, match="does not exist"):
        load_prediction(tmp_path / "missing.npz")


# ==================================================================================================== recipes


def test_default_recipes() -> None:
    r = default_recipe("deeplabv3plus", "voc")
    assert (r.batch_size, r.optimizer, r.lr, r.epochs, r.crop_size) == (16, "sgd", 0.01, 120, 512)
    assert (r.momentum, r.weight_decay, r.min_lr, r.poly_power) == (0.9, 5e-4, 1e-4, 0.9)
    assert (r.backbone, r.backbone_lr_mult, r.grad_clip, r.cat_max_ratio) == ("resnet101", 1.0, 0.0, 0.75)
    assert r.base_size == [2048, 512] and r.scale_range == [0.5, 2.0]
    m = default_recipe("mask2former", "coco")
    assert (m.batch_size, m.optimizer, m.lr, m.backbone_lr_mult, m.grad_clip, m.epochs) == (
        4, "adamw", 1e-4, 0.1, 0.01, 32)
    assert (m.backbone, m.weight_decay, m.min_lr, m.cat_max_ratio) == ("swin-b", 0.05, 0.0, 1.0)
    s = default_recipe("deeplabv3plus", "synthetic")
    assert s.crop_size == 64 and s.base_size == [0, 0] and s.epochs == 40
    assert (s.backbone, s.backbone_weights, s.output_stride, s.batch_size) == ("resnet18", "none", 16, 8)
    t = default_recipe("mask2former", "synthetic")
    assert (t.backbone, t.backbone_weights, t.small_head, t.batch_size) == ("tiny", "none", True, 4)
    assert (t.num_queries, t.lr, t.backbone_lr_mult, t.epochs) == (8, 1e-3, 1.0, 160)
    assert default_recipe("deeplabv3plus", "folder").epochs == 120
    with pytest.raises(ConfigError, match="unknown network"):
        default_recipe("unet")


def test_total_iterations_hand_values() -> None:
    r = default_recipe("deeplabv3plus", "voc")
    assert total_iterations(r, 10582) == 79365  # 120·10582/16 = 1269840/16 = 79365 exactly
    assert total_iterations(r, 7) == 53  # 120·7/16 = 52.5 → ceil 53
    m = default_recipe("mask2former", "coco")
    assert total_iterations(m, 118287) == 946296  # 32·118287/4
    assert total_iterations(load_recipe("deeplabv3plus", "voc", ["max_iter=500"]), 10582) == 500


def test_load_recipe_overrides_and_errors() -> None:
    r = load_recipe("deeplabv3plus", "voc", ["batch_size=8", "lr=0.02", "base_size=[1024,256]", "flip=false"])
    assert (r.batch_size, r.lr, r.base_size, r.flip) == (8, 0.02, [1024, 256], False)
    with pytest.raises(ConfigError, match="batch_size"):
        load_recipe("deeplabv3plus", "voc", ["batch_size=abc"])
    with pytest.raises(ConfigError, match="did you mean batch_size"):
        load_recipe("deeplabv3plus", "voc", ["batchsize=8"])
    with pytest.raises(ConfigError, match="--net"):
        load_recipe("deeplabv3plus", "voc", ["net=mask2former"])
    for bad in (["batch_size=0"], ["output_stride=4"], ["epochs=0"], ["scale_range=[2.0,1.0]"],
                ["test_scales=[]"], ["betas=[0.9]"]):
        with pytest.raises(ConfigError):
            load_recipe("deeplabv3plus", "voc", bad)


def test_backbone_weight_name() -> None:
    assert backbone_weight_name(default_recipe("deeplabv3plus")) == "resnet101"
    assert backbone_weight_name(load_recipe("deeplabv3plus", "voc", ["backbone=resnet50"])) == "resnet50"
    with pytest.raises(ConfigError, match="in1k"):
        backbone_weight_name(load_recipe("deeplabv3plus", "voc", ["pretrain=in22k"]))
    assert backbone_weight_name(load_recipe("mask2former", "voc", ["pretrain=in22k"])) == "swin-b-in22k"
    assert backbone_weight_name(default_recipe("mask2former")) == "swin-b"
    assert backbone_weight_name(load_recipe("mask2former", "voc", ["backbone=swin-l", "pretrain=in22k"])) \
        == "swin-l-in22k"
    with pytest.raises(ConfigError, match="Swin-L"):
        backbone_weight_name(load_recipe("mask2former", "voc", ["backbone=swin-l"]))
    with pytest.raises(ConfigError, match="backbone_weights"):
        backbone_weight_name(load_recipe("mask2former", "voc", ["backbone=tiny"]))
    assert backbone_weight_name(load_recipe("deeplabv3plus", "voc", ["backbone_weights=none"])) is None
    assert backbone_weight_name(load_recipe("mask2former", "voc", ["backbone_weights=/w/my.pth"])) == "/w/my.pth"


def test_recipe_dict_and_yaml_round_trip() -> None:
    for r in (default_recipe("deeplabv3plus", "voc"), load_recipe("mask2former", "coco", ["max_iter=80000"]),
              default_recipe("deeplabv3plus", "synthetic")):
        assert recipe_from_dict(r.to_dict()) == r
        assert recipe_from_dict(yaml.safe_load(r.to_yaml())) == r
    assert recipe_from_dict({}) == SegmenterRecipe()
    with pytest.raises(ConfigError):
        recipe_from_dict({"no_such_key": 1})


# ======================================================================================================= loop


def test_poly_lr_hand_values() -> None:
    assert poly_lr(0, 1000, 0.01, 1e-4, 0.9) == pytest.approx(0.01)
    assert poly_lr(1000, 1000, 0.01, 1e-4, 0.9) == pytest.approx(1e-4)
    assert poly_lr(2000, 1000, 0.01, 1e-4, 0.9) == pytest.approx(1e-4)  # past the end: the floor
    # t = total/2: (0.01 − 1e-4)·0.5^0.9 + 1e-4 = 0.0099·0.5358867 + 1e-4 = 0.0054053
    assert poly_lr(500, 1000, 0.01, 1e-4, 0.9) == pytest.approx(0.0099 * 0.5 ** 0.9 + 1e-4, rel=1e-12)
    assert poly_lr(500, 1000, 0.01, 1e-4, 0.9) == pytest.approx(0.0054053, abs=1e-7)
    # power 1, floor 0: linear → 1 − 250/1000 = 0.75
    assert poly_lr(250, 1000, 1.0, 0.0, 1.0) == pytest.approx(0.75)


def test_build_optimizer_sgd_groups(model: DeepLabV3PlusSegmenter) -> None:
    opt = build_optimizer(model, default_recipe("deeplabv3plus", "voc"))
    assert isinstance(opt, torch.optim.SGD)
    ids = [id(p) for g in opt.param_groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    assert set(ids) == {id(p) for p in model.parameters()}
    for g in opt.param_groups:
        assert g["momentum"] == 0.9 and g["weight_decay"] == 5e-4
        assert g["lr_mult"] == 1.0 and g["lr"] == g["initial_lr"] == pytest.approx(0.01)
    opt = build_optimizer(model, load_recipe("deeplabv3plus", "voc", ["backbone_lr_mult=0.1"]))
    enc = {id(p) for p in model.net.encoder.parameters()}
    by_mult = {g["lr_mult"]: g for g in opt.param_groups}
    assert set(by_mult) == {0.1, 1.0}
    assert {id(p) for p in by_mult[0.1]["params"]} == enc
    assert by_mult[0.1]["lr"] == pytest.approx(0.001) and by_mult[1.0]["lr"] == pytest.approx(0.01)


def test_build_optimizer_adamw(model: DeepLabV3PlusSegmenter) -> None:
    opt = build_optimizer(model, load_recipe("deeplabv3plus", "voc", ["optimizer=adamw", "lr=0.0002",
                                                                      "weight_decay=0.05", "betas=[0.8,0.99]"]))
    assert isinstance(opt, torch.optim.AdamW) and not isinstance(opt, torch.optim.SGD)
    for g in opt.param_groups:
        assert g["betas"] == (0.8, 0.99) and g["weight_decay"] == 0.05 and g["lr"] == pytest.approx(0.0002)
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))


def test_save_and_load_weights_round_trip(tmp_path: Path) -> None:
    a, b = deeplab(0, 3), deeplab(1, 3)
    g = torch.Generator().manual_seed(0)
    for name, buf in a.named_buffers():  # batch-norm statistics that differ from a fresh network's
        if name.endswith("running_mean"):
            buf.copy_(torch.randn(buf.shape, generator=g))
        elif name.endswith("num_batches_tracked"):
            buf.fill_(42)
    path = tmp_path / "w" / "model.safetensors"
    save_weights(path, a)
    sa, sb = a.state_dict(), b.state_dict()
    assert any(not torch.equal(sa[k], sb[k]) for k in sa)
    load_weights(path, b)
    sb = b.state_dict()
    assert set(sa) == set(sb)
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def test_load_weights_into_another_architecture_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    save_weights(path, deeplab(0, 3))
    with pytest.raises(DataError, match="does not fit"):
        load_weights(path, deeplab(0, 3, encoder="resnet34"))


def test_load_weights_with_another_class_count_is_refused(tmp_path: Path) -> None:
    # same tensor names, but the segmentation head has 3 output channels instead of 6
    path = tmp_path / "model.safetensors"
    save_weights(path, deeplab(0, 3))
    with pytest.raises(DataError, match="model.safetensors"):
        load_weights(path, deeplab(0, 6))


def test_inference_resizes_scores_before_normalising_as_mmseg() -> None:
    from tag2mask.segmenters.base import Segmenter

    class Stub(Segmenter):
        num_classes = 2

        def scores(self, images: torch.Tensor) -> torch.Tensor:
            b, _, h, w = images.shape
            column = torch.arange(w, dtype=torch.float32)
            out = torch.zeros(b, 2, h, w)
            out[:, 1] = 8.0 * (column % 2) - 4.0  # class 1 on odd columns, sharply
            return out

        def to_probabilities(self, scores: torch.Tensor) -> torch.Tensor:
            return torch.softmax(scores, dim=1)

    image = np.zeros((8, 8, 3), np.uint8)
    got = predict_probabilities(Stub(), image, base_size=(0, 0), scales=[0.5])  # the network sees 4x4
    small = Stub().scores(torch.zeros(1, 3, 4, 4))
    expected = torch.softmax(F.interpolate(small, size=(8, 8), mode="bilinear", align_corners=False), dim=1)[0]
    np.testing.assert_allclose(got, expected.numpy(), atol=1e-6)
    other_order = F.interpolate(torch.softmax(small, dim=1), size=(8, 8), mode="bilinear", align_corners=False)[0]
    assert not np.allclose(got, other_order.numpy(), atol=1e-3)  # the order matters, and it is MMSeg's
