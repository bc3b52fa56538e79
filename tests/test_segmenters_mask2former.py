"""Mask2Former wrapper: targets, loss, probabilities, Swin weight loading, optimiser groups (tiny model, CPU)."""

from __future__ import annotations

import importlib
import math
import re
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")

from safetensors.torch import save_file  # noqa: E402

from tag2mask.errors import DataError, MissingWeightsError, Tag2MaskError  # noqa: E402
from tag2mask.segmenters.mask2former import (  # noqa: E402
    SWIN_VARIANTS,
    Mask2FormerSegmenter,
    build_mask2former,
    semantic_probabilities,
    semantic_targets,
    swin_config,
)

NUM_CLASSES = 3
SIZE = 64


def tiny_model(seed: int = 0) -> Mask2FormerSegmenter:
    torch.manual_seed(seed)
    return build_mask2former(NUM_CLASSES, backbone="tiny")


def batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Two normalised 64×64 images and label maps: background, a class-0 square, a class-1 square, ignore rows."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(2, 3, SIZE, SIZE, generator=g)
    labels = torch.zeros(2, SIZE, SIZE, dtype=torch.int64)
    labels[0, 8:32, 8:32] = 1
    labels[1, 30:60, 20:50] = 2
    labels[:, :2] = 255
    images[0, :, 8:32, 8:32] += 2.0
    images[1, :, 30:60, 20:50] -= 2.0
    return images, labels


# ----------------------------------------------------------------------------------------------------- targets


def test_semantic_targets_hand_built() -> None:
    labels = torch.tensor(
        [
            [
                [0, 0, 2, 2],
                [0, 255, 2, 2],
                [255, 255, 0, 0],
            ]
        ]
    )
    class_labels, mask_labels = semantic_targets(labels)
    assert len(class_labels) == len(mask_labels) == 1
    assert class_labels[0].dtype == torch.int64
    assert class_labels[0].tolist() == [0, 2]
    assert mask_labels[0].dtype == torch.float32
    expected = torch.tensor(
        [
            [[1, 1, 0, 0], [1, 0, 0, 0], [0, 0, 1, 1]],  # id 0 (background): ignore pixels are 0
            [[0, 0, 1, 1], [0, 0, 1, 1], [0, 0, 0, 0]],  # id 2
        ],
        dtype=torch.float32,
    )
    assert torch.equal(mask_labels[0], expected)


def test_semantic_targets_all_ignore_is_empty() -> None:
    class_labels, mask_labels = semantic_targets(torch.full((2, 5, 6), 255))
    for ids, masks in zip(class_labels, mask_labels):
        assert ids.shape == (0,) and ids.dtype == torch.int64
        assert masks.shape == (0, 5, 6)


def test_semantic_targets_needs_a_batch() -> None:
    with pytest.raises(ValueError):
        semantic_targets(torch.zeros(4, 4, dtype=torch.int64))


# ----------------------------------------------------------------------------------------------------- probabilities


def test_semantic_probabilities_by_hand() -> None:
    # 1 image, 2 queries, 2 classes (+ no object), a 1×2 mask.
    class_probs = torch.tensor([[[0.5, 0.25, 0.25], [0.1, 0.6, 0.3]]])
    mask_logits = torch.tensor([[[[0.0, math.log(3.0)]], [[math.log(3.0), -math.log(3.0)]]]])
    # sigmoid: query 0 → [0.5, 0.75], query 1 → [0.75, 0.25]
    # pixel 0: k0 = .5·.5 + .1·.75 = .325, k1 = .25·.5 + .6·.75 = .575 → /0.9
    # pixel 1: k0 = .5·.75 + .1·.25 = .4,  k1 = .25·.75 + .6·.25 = .3375 → /0.7375
    prob = semantic_probabilities(class_probs.log(), mask_logits, (1, 2))
    expected = torch.tensor([[[[13 / 36, 32 / 59]], [[23 / 36, 27 / 59]]]])
    assert prob.dtype == torch.float32
    assert torch.allclose(prob, expected, atol=1e-6)


def test_semantic_probabilities_upsamples_logits_then_sigmoid() -> None:
    g = torch.Generator().manual_seed(1)
    class_logits = torch.randn(2, 4, 3, generator=g)
    mask_logits = torch.randn(2, 4, 3, 5, generator=g) * 4
    prob = semantic_probabilities(class_logits.half(), mask_logits.half(), (6, 10))
    assert prob.shape == (2, 2, 6, 10) and prob.dtype == torch.float32
    up = torch.nn.functional.interpolate(mask_logits.half().float(), size=(6, 10), mode="bilinear",
                                         align_corners=False)
    scores = torch.einsum("bqk,bqhw->bkhw", class_logits.half().float().softmax(-1)[..., :-1], up.sigmoid())
    assert torch.allclose(prob, scores / scores.sum(1, keepdim=True), atol=1e-6)


def test_probabilities_shape_and_sum() -> None:
    model = tiny_model().eval()
    images, _ = batch()
    with torch.no_grad():
        prob = model.probabilities(images)
    assert prob.shape == (2, NUM_CLASSES, SIZE, SIZE)
    assert prob.dtype == torch.float32
    assert bool((prob >= 0).all())
    assert torch.allclose(prob.sum(1), torch.ones(2, SIZE, SIZE), atol=1e-5)


def test_semantic_probabilities_stay_float32_under_autocast() -> None:
    class_logits, mask_logits = torch.randn(1, 4, 3), torch.randn(1, 4, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        prob = semantic_probabilities(class_logits, mask_logits, (16, 16))
    assert prob.dtype == torch.float32
    assert torch.allclose(prob, semantic_probabilities(class_logits, mask_logits, (16, 16)))


# ----------------------------------------------------------------------------------------------------- loss


def test_loss_backward_reaches_backbone_and_head() -> None:
    model = tiny_model().train()
    images, labels = batch()
    loss = model.loss(images, labels)
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    named = dict(model.named_parameters())
    for name in (
        "model.model.pixel_level_module.encoder.swin.embeddings.patch_embeddings.projection.weight",
        "model.model.pixel_level_module.encoder.swin.encoder.layers.0.blocks.0.attention.q_proj.weight",
        "model.model.pixel_level_module.decoder.mask_projection.weight",
        "model.model.transformer_module.queries_features.weight",
        "model.class_predictor.weight",
    ):
        grad = named[name].grad
        assert grad is not None and bool(grad.abs().sum() > 0), name
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []  # every trainable parameter is used (DDP without find_unused_parameters)


def test_a_few_adamw_steps_lower_the_loss() -> None:
    model = tiny_model().train()
    images, labels = batch()
    optimiser = torch.optim.AdamW(model.param_groups(1e-3, 0.05, 1.0))

    def fixed_loss() -> float:
        torch.manual_seed(123)  # same sampled points and matching noise for both measurements
        with torch.no_grad():
            return float(model.loss(images, labels))

    before = fixed_loss()
    for _ in range(8):
        optimiser.zero_grad()
        model.loss(images, labels).backward()
        optimiser.step()
    assert fixed_loss() < before


def test_all_ignore_labels_give_a_finite_loss() -> None:
    model = tiny_model().train()
    images, labels = batch()
    for lab in (torch.full_like(labels, 255), torch.cat([labels[:1], torch.full_like(labels[1:], 255)])):
        model.zero_grad()
        loss = model.loss(images, lab)
        assert torch.isfinite(loss)
        loss.backward()
        assert model.model.class_predictor.weight.grad is not None


def test_label_out_of_range_is_a_data_error() -> None:
    model = tiny_model()
    images, labels = batch()
    labels[0, 40, 40] = NUM_CLASSES
    with pytest.raises(DataError, match="out of range"):
        model.loss(images, labels)


# ----------------------------------------------------------------------------------------------------- weights

_TO_LEGACY = (
    (".attention.q_proj.", ".attention.self.query."),
    (".attention.k_proj.", ".attention.self.key."),
    (".attention.v_proj.", ".attention.self.value."),
    (".attention.relative_position_bias.relative_position_bias_table", ".attention.self.relative_position_bias_table"),
    (".attention.o_proj.", ".attention.output.dense."),
    (".mlp.fc1.", ".intermediate.dense."),
    (".mlp.fc2.", ".output.dense."),
)


def legacy_name(key: str) -> str:
    """The name of ``key`` in the published Microsoft files (transformers 4 layout)."""
    for new, old in _TO_LEGACY:
        key = key.replace(new, old)
    return key


def swin_classifier_state(embed_dim: int | None = None, seed: int = 7) -> dict[str, torch.Tensor]:
    """A random ``SwinForImageClassification`` of the tiny variant: ``swin.*`` and ``classifier.*`` tensors."""
    from transformers import SwinForImageClassification

    config = swin_config("tiny")
    if embed_dim is not None:
        config.embed_dim = embed_dim
    config.num_labels = 5
    torch.manual_seed(seed)
    model = SwinForImageClassification(config)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_()  # nothing left at an initial constant, so a copy is visible
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    assert any(k.startswith("classifier.") for k in state) and any(k.startswith("swin.layernorm.") for k in state)
    return state


def assert_backbone_equals(model: Mask2FormerSegmenter, state: dict[str, torch.Tensor]) -> None:
    own = model.backbone.state_dict()
    checked = 0
    for key, value in own.items():
        if key.startswith(("hidden_states_norms.", "swin.layernorm.")):
            continue
        assert torch.equal(value, state[key]), key
        checked += 1
    assert checked > 50


def test_load_safetensors_classifier_layouts(tmp_path: Path) -> None:
    state = swin_classifier_state()
    current = tmp_path / "swin-current.safetensors"
    save_file(state, str(current))
    assert_backbone_equals(build_mask2former(NUM_CLASSES, "tiny", current), state)

    legacy = tmp_path / "swin-legacy.safetensors"
    save_file({legacy_name(k): v for k, v in state.items()}, str(legacy))
    assert any(".attention.self.query." in k for k in map(legacy_name, state))
    assert_backbone_equals(build_mask2former(NUM_CLASSES, "tiny", legacy), state)


def test_load_bin_plain_swin_model(tmp_path: Path) -> None:
    state = swin_classifier_state(seed=3)
    plain = {k[len("swin."):]: v for k, v in state.items() if k.startswith("swin.")}  # SwinModel layout
    path = tmp_path / "pytorch_model.bin"
    torch.save(plain, path)
    assert_backbone_equals(build_mask2former(NUM_CLASSES, "tiny", path), state)


def test_shape_mismatch_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "wide-swin.safetensors"
    save_file(swin_classifier_state(embed_dim=32), str(path))
    with pytest.raises(Tag2MaskError, match=re.escape(str(path))) as info:
        build_mask2former(NUM_CLASSES, "tiny", path)
    assert "another shape" in str(info.value)


def test_foreign_file_lists_missing_keys(tmp_path: Path) -> None:
    path = tmp_path / "other.safetensors"
    save_file({"conv1.weight": torch.zeros(4, 3, 3, 3)}, str(path))
    with pytest.raises(Tag2MaskError, match="missing") as info:
        build_mask2former(NUM_CLASSES, "tiny", path)
    assert "other.safetensors" in str(info.value)


def test_missing_known_weights_name_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    with pytest.raises(MissingWeightsError, match=re.escape("swin-large-patch4-window12-384-in22k.safetensors")):
        build_mask2former(NUM_CLASSES, "tiny", "swin-l-in22k")


# ----------------------------------------------------------------------------------------------------- optimiser


def test_param_groups_cover_every_trainable_parameter_once() -> None:
    model = tiny_model()
    lr, wd, mult = 1e-4, 0.05, 0.1
    groups = model.param_groups(lr, wd, mult)
    ids = [id(p) for g in groups for p in g["params"]]
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert len(ids) == len(set(ids)) == len(trainable)
    assert set(ids) == {id(p) for p in trainable}
    assert all(g["params"] for g in groups)

    named = dict(model.named_parameters())
    where = {id(p): g for g in groups for p in g["params"]}
    enc = "model.model.pixel_level_module.encoder."

    def group(name: str) -> dict:
        return where[id(named[name])]

    backbone_linear = group(enc + "swin.encoder.layers.1.blocks.0.mlp.fc1.weight")
    assert backbone_linear["lr"] == pytest.approx(lr * mult) and backbone_linear["weight_decay"] == wd
    for name in (
        enc + "swin.embeddings.norm.weight",
        enc + "swin.encoder.layers.0.blocks.0.layernorm_before.bias",
        enc + "hidden_states_norms.stage2.weight",
        enc + "swin.encoder.layers.0.blocks.0.attention.relative_position_bias.relative_position_bias_table",
    ):
        assert group(name)["weight_decay"] == 0.0 and group(name)["lr"] == pytest.approx(lr * mult), name
    for name in (
        "model.model.transformer_module.queries_embedder.weight",
        "model.model.transformer_module.queries_features.weight",
        "model.model.transformer_module.level_embed.weight",
        "model.model.transformer_module.decoder.layers.0.self_attn_layer_norm.weight",
        "model.model.pixel_level_module.decoder.adapter_1.1.weight",  # GroupNorm
    ):
        assert group(name)["weight_decay"] == 0.0 and group(name)["lr"] == lr, name
    for name in ("model.class_predictor.weight", "model.model.pixel_level_module.decoder.level_embed"):
        assert group(name)["weight_decay"] == wd and group(name)["lr"] == lr, name
    assert id(named[enc + "swin.layernorm.weight"]) not in where  # unused by the backbone, frozen


# ----------------------------------------------------------------------------------------------------- variants


@pytest.mark.parametrize(
    ("name", "dim", "heads", "window"),
    [("swin-t", 96, [3, 6, 12, 24], 7), ("swin-b", 128, [4, 8, 16, 32], 12), ("swin-l", 192, [6, 12, 24, 48], 12)],
)
def test_swin_variants_config(name: str, dim: int, heads: list[int], window: int) -> None:
    config = swin_config(name)
    assert config.embed_dim == dim and list(config.num_heads) == heads and config.window_size == window
    assert list(config.out_features) == ["stage1", "stage2", "stage3", "stage4"]
    assert config.drop_path_rate == pytest.approx(SWIN_VARIANTS[name].drop_path_rate)


def test_swin_l_builds_on_meta_device_with_mmseg_head() -> None:
    with torch.device("meta"):
        model = build_mask2former(21, "swin-l")
    assert model.backbone.channels == [192, 384, 768, 1536]
    c = model.model.config
    assert (c.num_queries, c.hidden_dim, c.encoder_layers, c.decoder_layers, c.train_num_points) == (100, 256, 6, 10, 12544)
    assert (c.class_weight, c.mask_weight, c.dice_weight, c.no_object_weight) == (2.0, 5.0, 5.0, 0.1)
    block = model.backbone.swin.encoder.layers[0].blocks[0]
    assert tuple(block.attention.relative_position_bias.relative_position_bias_table.shape) == (23 * 23, 6)


def test_unknown_backbone_is_a_config_error() -> None:
    with pytest.raises(Tag2MaskError, match="swin-b"):
        build_mask2former(NUM_CLASSES, "resnet50")


def test_without_transformers_the_module_imports_and_building_says_how_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "transformers", None)  # `import transformers` now raises ImportError
    monkeypatch.delitem(sys.modules, "tag2mask.segmenters.mask2former")
    module = importlib.import_module("tag2mask.segmenters.mask2former")
    with pytest.raises(Tag2MaskError, match=re.escape('pip install -e ".[stage2]"')):
        module.build_mask2former(NUM_CLASSES, "tiny")


def test_legacy_and_current_swin_names_map_into_each_other() -> None:
    # transformers < 5 names its Swin tensors the legacy way (attention.self.query ...): the loader maps the file
    # to whichever names the installed SwinBackbone uses, so current -> legacy -> current must be the identity
    from tag2mask.segmenters import mask2former as m2f

    names = list(tiny_model().backbone.state_dict())
    legacy = [m2f._legacy_name(k) for k in names]
    assert "swin.encoder.layers.0.blocks.0.attention.self.query.weight" in legacy
    assert "swin.encoder.layers.0.blocks.0.output.dense.weight" in legacy
    for current, old in zip(names, legacy):
        back = old
        for pattern, repl in m2f._LEGACY_SWIN_RENAMES:
            back = re.sub(pattern, repl, back)
        assert back == current


def test_loss_normaliser_is_the_mask_count_averaged_over_ranks() -> None:
    from tag2mask.segmenters import mask2former as m2f

    model = tiny_model()
    assert model.model.criterion.get_num_masks.__name__ == "global_num_masks"  # not transformers' per-rank count
    labels = [torch.tensor([0, 2]), torch.tensor([0, 1, 2])]
    assert float(m2f.global_num_masks(labels, "cpu")) == 5.0  # one process: the batch's own count
    assert float(m2f.global_num_masks([torch.zeros(0, dtype=torch.long)], "cpu")) == 1.0  # clamped at 1
    # with a process group, the count is the mean over the ranks (a 1-rank gloo group here)
    import torch.distributed as dist

    if dist.is_available() and not dist.is_initialized():
        import os

        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", "29561")
        dist.init_process_group("gloo", rank=0, world_size=1)
        try:
            assert float(m2f.global_num_masks(labels, "cpu")) == 5.0
            images, target = batch()
            assert torch.isfinite(model.loss(images, target))
        finally:
            dist.destroy_process_group()
