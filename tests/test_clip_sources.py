"""CLIP from Hugging Face ``CLIPModel`` folders and OpenCLIP checkpoints (``tag2mask.models.clip_sources``).

Each source is checked against the library that defines it: a random HF ``CLIPModel`` saved by transformers loads
into the open_clip model whose text features, patch tokens and hidden states equal transformers' own; a random
OpenCLIP model saved as a state dict loads with its name into a model equal to open_clip's own. A random
OpenAI-layout CLIP written in the HF layout gives the very same CAMs. Missing repositories, broken or hostile
configs and architectures the CAM model cannot run are one clear error each.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any

import pytest
import torch
from open_clip.transformer import QuickGELU
from safetensors.torch import save_file
from torch import nn

from tag2mask.cam.gradcam import GradCAMClip
from tag2mask.errors import MissingWeightsError, Tag2MaskError
from tag2mask.models.clip import clip_tokenizer, load_clip
from tag2mask.models.clip_cam import vit_forward
from tag2mask.models.prompts import PromptLearner, encode_prompts
from tag2mask.models.tiny import tiny_clip
from tag2mask.testing import openai_state_dict

transformers = pytest.importorskip("transformers")  # the dev extra; only the reference side needs it

PROMPTS = ["a photo of a dog.", "X X X X aeroplane.", "a traffic light"]
REPO = "openai/clip-vit-base-patch16"


@pytest.fixture(autouse=True)
def _no_user_hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test sees an empty Hugging Face cache of its own, never the user's."""
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf_hub"))
    monkeypatch.delenv("HF_HOME", raising=False)


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    """(max |a - b|, that divided by max |b|)."""
    d = (a - b).abs().max().item()
    return d, d / b.abs().max().item()


def _assert_close(a: torch.Tensor, b: torch.Tensor, rel: float = 1e-5) -> None:
    assert a.shape == b.shape and a.dtype == b.dtype == torch.float32
    d, r = _max_diff(a, b)
    assert r <= rel, f"max abs diff {d:.3g}, relative {r:.3g}"


# ------------------------------------------------------------------------------ HF models written by transformers


def _hf_config(text_act: str = "quick_gelu", vision_act: str = "quick_gelu", eps: float = 1e-5, **text: Any) -> Any:
    """A small CLIPConfig with OpenAI's vocabulary and context. The heads are 32 wide (not OpenAI's 64), so a
    loader that inferred the head count from the width would compute something else."""
    return transformers.CLIPConfig(
        text_config=dict(hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=2,
                         vocab_size=49408, max_position_embeddings=77, hidden_act=text_act, layer_norm_eps=eps,
                         **text),
        vision_config=dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                           image_size=64, patch_size=16, hidden_act=vision_act, layer_norm_eps=eps),
        projection_dim=24,
    )


def _random_hf_clip(config: Any, seed: int = 0) -> Any:
    """A CLIPModel whose every weight is random and O(0.1–1), so that activations and norms all matter."""
    torch.manual_seed(seed)
    model = transformers.CLIPModel(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name == "logit_scale":
                p.fill_(math.log(100.0))
            elif "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.1 * torch.randn_like(p))
            else:
                p.copy_(torch.randn_like(p) * (0.5 if p.ndim == 1 else p.shape[-1] ** -0.5 * 1.5))
    return model


def _save_hf(model: Any, folder: Path, layout: str = "safetensors") -> Path:
    """``model`` as a CLIPModel folder: transformers' own save_pretrained, or config + ``pytorch_model.bin``."""
    if layout == "safetensors":
        model.save_pretrained(folder)
        assert (folder / "model.safetensors").is_file()
    else:
        folder.mkdir(parents=True, exist_ok=True)
        model.config.save_pretrained(folder)
        torch.save({k: v.contiguous() for k, v in model.state_dict().items()}, folder / "pytorch_model.bin")
    return folder


def _features(output: Any) -> torch.Tensor:
    """transformers >= 5 returns an output object from get_*_features, earlier versions a tensor."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def _compare_with_transformers(clip: nn.Module, hf: Any) -> dict[str, tuple[float, float]]:
    """tag2mask's loaded model against transformers' forward of the same weights; returns every max difference."""
    tokens = clip_tokenizer()(PROMPTS)
    pixels = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    captured: dict[str, torch.Tensor] = {}
    hook = clip.visual.ln_post.register_forward_hook(
        lambda _m, inputs, output: captured.update(before=inputs[0], after=output))
    try:
        vision = vit_forward(clip.visual, pixels)  # the CAM forward, at the model's native size
    finally:
        hook.remove()
    with torch.no_grad():
        ref_text = _features(hf.get_text_features(input_ids=tokens))
        out = hf.vision_model(pixel_values=pixels, output_hidden_states=True)
        ref_tokens = hf.vision_model.post_layernorm(out.last_hidden_state) @ hf.visual_projection.weight.t()
        ref_activation = hf.vision_model.encoder.layers[-1].layer_norm1(out.hidden_states[-2])
        ref_image = _features(hf.get_image_features(pixel_values=pixels))
        text = clip.encode_text(tokens)
        prompts = encode_prompts(clip, clip.token_embedding(tokens), tokens)  # the prompt learner's text path
        image = clip.encode_image(pixels)
    pairs = {
        "text features (encode_text)": (text, ref_text),
        "text features (encode_prompts)": (prompts, ref_text),
        "hidden states before ln_post": (captured["before"].detach(), out.last_hidden_state),
        "ln_1 of the last block (GradCAM tap)": (vision.activation.detach(), ref_activation),
        "patch tokens (ln_post, proj)": ((captured["after"] @ clip.visual.proj).detach(), ref_tokens),
        "patch-mean embedding": (vision.embedding.detach(), ref_tokens[:, 1:].mean(dim=1)),
        "image features (class token)": (image, ref_image),
    }
    for a, b in pairs.values():
        _assert_close(a, b)
    return {name: _max_diff(a, b) for name, (a, b) in pairs.items()}


@pytest.mark.parametrize(
    ("text_act", "vision_act", "layout", "eos", "eps"),
    [
        ("quick_gelu", "quick_gelu", "safetensors", 49407, 1e-5),  # openai/clip-vit-base-patch16's settings
        ("gelu", "gelu", "bin", 49407, 1e-5),  # LAION's HF checkpoints
        # mixed towers, the legacy eos_token_id (argmax pooling), another LayerNorm epsilon (large, to be seen)
        ("gelu", "quick_gelu", "safetensors", 2, 0.5),
    ],
)
def test_hf_clipmodel_folder_equals_transformers(
    tmp_path: Path, text_act: str, vision_act: str, layout: str, eos: int, eps: float
) -> None:
    hf = _random_hf_clip(_hf_config(text_act, vision_act, eps, eos_token_id=eos))
    clip = load_clip(_save_hf(hf, tmp_path / "clip", layout))
    assert not clip.training and all(not p.requires_grad and p.dtype == torch.float32 for p in clip.parameters())
    for blocks, act in ((clip.visual.transformer.resblocks, vision_act), (clip.transformer.resblocks, text_act)):
        assert all(type(b.mlp.gelu) is (QuickGELU if act == "quick_gelu" else nn.GELU) for b in blocks)
        assert all(b.attn.num_heads == (4 if blocks is clip.visual.transformer.resblocks else 2) for b in blocks)
    assert clip.logit_scale.exp().item() == pytest.approx(100.0)
    _compare_with_transformers(clip, hf)


def test_weight_file_with_config_beside_it_and_without(tmp_path: Path) -> None:
    folder = _save_hf(_random_hf_clip(_hf_config()), tmp_path / "clip")
    by_file, by_folder = load_clip(folder / "model.safetensors"), load_clip(folder)
    assert all(torch.equal(v, by_folder.state_dict()[k]) for k, v in by_file.state_dict().items())
    (folder / "config.json").rename(tmp_path / "elsewhere.json")
    with pytest.raises(Tag2MaskError, match="need their config.json beside them"):
        load_clip(folder / "model.safetensors")


def test_the_activation_comes_from_the_config(tmp_path: Path) -> None:
    """The same GELU weights read as quick_gelu give other features: the config is read, not assumed."""
    folder = _save_hf(_random_hf_clip(_hf_config("gelu", "gelu")), tmp_path / "clip")
    gelu = load_clip(folder)
    config = json.loads((folder / "config.json").read_text())
    for tower in ("text_config", "vision_config"):
        config[tower]["hidden_act"] = "quick_gelu"
    (folder / "config.json").write_text(json.dumps(config))
    quick = load_clip(folder)
    tokens, pixels = clip_tokenizer()(PROMPTS), torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for a, b in ((gelu.encode_text(tokens), quick.encode_text(tokens)),
                     (gelu.encode_image(pixels), quick.encode_image(pixels))):
            assert _max_diff(a, b)[1] > 1e-3
    for bad in ("gelu_new", "relu", None):
        config["vision_config"]["hidden_act"] = bad
        (folder / "config.json").write_text(json.dumps(config))
        with pytest.raises(Tag2MaskError, match=f"hidden_act {bad!r} is not one tag2mask can build"):
            load_clip(folder)


# ------------------------------------------------------------------------------ OpenAI layout → HF layout → CAMs


def _openai_to_hf(model: nn.Module, act: str = "quick_gelu") -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """A test-side writer of the HF layout: an OpenAI-layout CLIP's tensors under CLIPModel's names, and its
    config.json (OpenAI's heads are 64 wide)."""
    sd = openai_state_dict(model, torch.float32)
    out: dict[str, torch.Tensor] = {
        "logit_scale": sd["logit_scale"],
        "text_model.embeddings.token_embedding.weight": sd["token_embedding.weight"],
        "text_model.embeddings.position_embedding.weight": sd["positional_embedding"],
        "text_model.final_layer_norm.weight": sd["ln_final.weight"],
        "text_model.final_layer_norm.bias": sd["ln_final.bias"],
        "text_projection.weight": sd["text_projection"].t().contiguous(),
        "vision_model.embeddings.class_embedding": sd["visual.class_embedding"],
        "vision_model.embeddings.patch_embedding.weight": sd["visual.conv1.weight"],
        "vision_model.embeddings.position_embedding.weight": sd["visual.positional_embedding"],
        "vision_model.pre_layrnorm.weight": sd["visual.ln_pre.weight"],
        "vision_model.pre_layrnorm.bias": sd["visual.ln_pre.bias"],
        "vision_model.post_layernorm.weight": sd["visual.ln_post.weight"],
        "vision_model.post_layernorm.bias": sd["visual.ln_post.bias"],
        "visual_projection.weight": sd["visual.proj"].t().contiguous(),
    }
    towers = {"text_model": "transformer.resblocks.", "vision_model": "visual.transformer.resblocks."}
    names = {"attn.out_proj": "self_attn.out_proj", "ln_1": "layer_norm1", "ln_2": "layer_norm2",
             "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2"}
    for hf_tower, prefix in towers.items():
        n = len({k[len(prefix):].split(".")[0] for k in sd if k.startswith(prefix)})
        for i in range(n):
            src, dst = f"{prefix}{i}.", f"{hf_tower}.encoder.layers.{i}."
            for kind in ("weight", "bias"):
                for which, part in zip("qkv", sd[f"{src}attn.in_proj_{kind}"].chunk(3), strict=True):
                    out[f"{dst}self_attn.{which}_proj.{kind}"] = part.contiguous()
                for old, new in names.items():
                    out[f"{dst}{new}.{kind}"] = sd[f"{src}{old}.{kind}"]
    width, text_width = sd["visual.conv1.weight"].shape[0], sd["token_embedding.weight"].shape[1]
    config = {
        "model_type": "clip", "architectures": ["CLIPModel"], "projection_dim": sd["visual.proj"].shape[1],
        "text_config": {"hidden_size": text_width, "intermediate_size": 4 * text_width, "num_hidden_layers": 2,
                        "num_attention_heads": text_width // 64, "hidden_act": act, "vocab_size": 49408,
                        "max_position_embeddings": 77, "eos_token_id": 49407},
        "vision_config": {"hidden_size": width, "intermediate_size": 4 * width, "num_hidden_layers": 2,
                          "num_attention_heads": width // 64, "hidden_act": act, "patch_size": 16,
                          "image_size": 64},
    }
    return out, config


def _write_hf(folder: Path, state_dict: dict[str, torch.Tensor], config: dict[str, Any]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    save_file(state_dict, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_openai_clip_through_the_hf_layout_gives_identical_cams(tmp_path: Path) -> None:
    model = tiny_clip(seed=5, image_size=64)
    with torch.no_grad():  # no parameter left at its initial constant (LayerNorms are ones and zeros)
        g = torch.Generator().manual_seed(5)
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    folder = _write_hf(tmp_path / "hf", *_openai_to_hf(model))
    # the test's writer is right: transformers reads its folder as the same CLIP
    hf = transformers.CLIPModel.from_pretrained(folder).eval()
    tokens = clip_tokenizer()(PROMPTS)
    with torch.no_grad():
        _assert_close(_features(hf.get_text_features(input_ids=tokens)), model.encode_text(tokens))
    loaded = load_clip(folder)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in loaded.state_dict().items())
    images = torch.randn(2, 3, 48, 80, generator=torch.Generator().manual_seed(2))  # 3×5 patches: resized pos-embed
    labels = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]])
    outs = []
    for clip in (model, loaded):
        learner = PromptLearner(clip, ["cat", "dog", "traffic light"], ["sky", ""], n_ctx=4, seed=0)
        outs.append(GradCAMClip(clip, learner)(images, labels, need_attention=True))
    assert outs[0].cam.shape == (4, 3, 5) and outs[0].cam.abs().max() > 0
    for name in ("cam", "logits", "probs", "att", "image_embedding"):
        assert torch.equal(getattr(outs[0], name), getattr(outs[1], name)), name


# ------------------------------------------------------------------------------ OpenCLIP checkpoints


TINY_OPEN_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 128, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 128, "heads": 2, "layers": 2},
}


@pytest.fixture
def tiny_archs(monkeypatch: pytest.MonkeyPatch) -> dict[str, dict]:
    """Two tiny model configs registered in open_clip for this test: GELU and its "-quickgelu" twin."""
    import open_clip.factory

    configs = {"t2m-tiny": TINY_OPEN_CLIP, "t2m-tiny-quickgelu": {**TINY_OPEN_CLIP, "quick_gelu": True}}
    for name, cfg in configs.items():
        monkeypatch.setitem(open_clip.factory._MODEL_CONFIGS, name, cfg)
    return configs


def _open_clip(arch: str, seed: int = 0) -> nn.Module:
    import open_clip

    torch.manual_seed(seed)
    # frozen like load_clip's models: torch picks its attention kernel by requires_grad, and the kernels round apart
    return open_clip.create_model(arch, pretrained=None).eval().requires_grad_(False)


def _assert_same_model(loaded: nn.Module, ref: nn.Module, act: type[nn.Module], size: int) -> None:
    """``loaded`` is ``ref`` (same tensors, activation ``act``), frozen, and computes exactly what ``ref`` does."""
    assert all(torch.equal(v, ref.state_dict()[k]) for k, v in loaded.state_dict().items())
    blocks = [*loaded.visual.transformer.resblocks, *loaded.transformer.resblocks]
    assert all(type(b.mlp.gelu) is act for b in blocks)
    assert not loaded.training and all(not p.requires_grad for p in loaded.parameters())
    tokens, pixels = clip_tokenizer()(PROMPTS[:2]), torch.randn(1, 3, size, size)
    with torch.no_grad():
        assert torch.equal(loaded.encode_text(tokens), ref.encode_text(tokens))
    assert torch.equal(vit_forward(loaded.visual, pixels).embedding, vit_forward(ref.visual, pixels).embedding)


@pytest.mark.parametrize(
    ("arch", "layout"),
    [("t2m-tiny", "bin"), ("t2m-tiny", "safetensors"), ("t2m-tiny-quickgelu", "ddp-checkpoint")],
)
def test_open_clip_checkpoint_with_its_model_name(
    tmp_path: Path, tiny_archs: dict, arch: str, layout: str
) -> None:
    ref = _open_clip(arch)
    sd = {k: v.contiguous() for k, v in ref.state_dict().items()}
    if layout == "safetensors":
        path = tmp_path / "open_clip_model.safetensors"
        save_file(sd, str(path))
    elif layout == "bin":
        path = tmp_path / "open_clip_pytorch_model.bin"
        torch.save(sd, path)
    else:  # what open_clip's training script saves: DDP's module. prefix, under "state_dict", with the epoch
        path = tmp_path / "epoch_3.pt"
        torch.save({"epoch": 3, "name": "run", "state_dict": {f"module.{k}": v for k, v in sd.items()}}, path)
    act = QuickGELU if arch.endswith("quickgelu") else nn.GELU
    loaded = load_clip(path, arch=arch)
    _assert_same_model(loaded, ref, act, 64)
    with torch.no_grad():  # the image tower at its native size, through open_clip's own forward
        pixels = torch.randn(2, 3, 64, 64)
        assert torch.equal(loaded.encode_image(pixels), ref.encode_image(pixels))
    if layout != "ddp-checkpoint":  # the folder holding it, as on the hub
        _assert_same_model(load_clip(tmp_path, arch=arch), ref, act, 64)
    other = "t2m-tiny" if arch.endswith("quickgelu") else "t2m-tiny-quickgelu"
    swapped = load_clip(path, arch=other)  # the same file under the twin name: the name decides the activation
    assert all(type(b.mlp.gelu) is not act for b in swapped.transformer.resblocks)
    tokens = clip_tokenizer()(PROMPTS)
    with torch.no_grad():
        assert _max_diff(swapped.encode_text(tokens), ref.encode_text(tokens))[1] > 1e-4


def test_open_clip_vit_b_16_gelu_or_quickgelu_follows_the_name(tmp_path: Path) -> None:
    """The real names: ViT-B-16 is exact GELU (LAION's weights), ViT-B-16-quickgelu QuickGELU (OpenAI's, MetaCLIP)."""
    ref = _open_clip("ViT-B-16")
    path = tmp_path / "open_clip_model.safetensors"
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(path))
    gelu = load_clip(path, arch="ViT-B-16")
    assert gelu.visual.conv1.weight.shape == (768, 3, 16, 16) and gelu.text_projection.shape == (512, 512)
    assert len(gelu.visual.transformer.resblocks) == 12 and gelu.visual.transformer.resblocks[0].attn.num_heads == 12
    _assert_same_model(gelu, ref, nn.GELU, 32)
    del gelu, ref
    quick = load_clip(path, arch="ViT-B-16-quickgelu")
    blocks = [*quick.visual.transformer.resblocks, *quick.transformer.resblocks]
    assert all(type(b.mlp.gelu) is QuickGELU for b in blocks)


def test_open_clip_names_the_cam_model_cannot_run_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import open_clip.factory

    path = tmp_path / "open_clip_model.safetensors"
    save_file({"x": torch.zeros(1)}, str(path))
    vision = TINY_OPEN_CLIP["vision_cfg"]
    for name, cfg in {"t2m-attnpool": {**TINY_OPEN_CLIP, "vision_cfg": {**vision, "attentional_pool": True}},
                      "t2m-qknorm": {**TINY_OPEN_CLIP, "vision_cfg": {**vision, "qk_norm": True}}}.items():
        monkeypatch.setitem(open_clip.factory._MODEL_CONFIGS, name, cfg)
    refusals = {
        "RN50": "ResNet",
        "EVA02-B-16": "timm model",
        "ViT-B-16-SigLIP": "timm model",
        "roberta-ViT-B-32": "Hugging Face model",
        "coca_ViT-B-32": "custom text tower",
        "t2m-attnpool": "pools with attention",
        "t2m-qknorm": "custom attention blocks",
        "ViT-B-17": "not an OpenCLIP model name; close ones: ViT-B-16",
        "hf-hub:laion/CLIP-ViT-B-16-laion2B-s34B-b88K": "no schema or path",
    }
    for arch, reason in refusals.items():
        with pytest.raises(Tag2MaskError, match=reason):
            load_clip(path, arch=arch)


def test_arch_with_a_hf_folder_is_refused(tmp_path: Path, tiny_archs: dict) -> None:
    folder = _save_hf(_random_hf_clip(_hf_config()), tmp_path / "clip")
    (folder / "open_clip_model.safetensors").symlink_to(folder / "model.safetensors")
    with pytest.raises(Tag2MaskError, match="holds a Hugging Face CLIPModel.*leave it empty"):
        load_clip(folder, arch="t2m-tiny")
    other = tmp_path / "open_clip"
    other.mkdir()
    torch.save(_open_clip("t2m-tiny").state_dict(), other / "open_clip_pytorch_model.bin")
    with pytest.raises(Tag2MaskError, match="open_clip_pytorch_model.bin is an OpenCLIP checkpoint.*models.clip_arch"):
        load_clip(other)  # an OpenCLIP folder without its model name
    with pytest.raises(MissingWeightsError, match="holds no open_clip_model.safetensors"):
        load_clip(tmp_path, arch="t2m-tiny")


# ------------------------------------------------------------------------------ hub names: weights folder, HF cache


def _fake_hub_snapshot(cache: Path, repo: str, source: Path, rev: str = "abc123") -> Path:
    """``source``'s files laid out as huggingface_hub caches them: blobs, and symlinks in snapshots/<rev>."""
    base = cache / f"models--{repo.replace('/', '--')}"
    (base / "blobs").mkdir(parents=True, exist_ok=True)
    snap = base / "snapshots" / rev
    snap.mkdir(parents=True)
    for f in source.iterdir():
        data = f.read_bytes()
        blob = base / "blobs" / hashlib.sha256(data).hexdigest()  # named by content, no extension, as the hub does
        blob.write_bytes(data)
        (snap / f.name).symlink_to(os.path.relpath(blob, snap))
    (base / "refs").mkdir(exist_ok=True)
    (base / "refs" / "main").write_text(rev)
    return snap


def test_hub_repo_name_missing_then_in_the_hf_cache_then_in_the_weights_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    weights = Path(os.environ["TAG2MASK_WEIGHTS"])
    with pytest.raises(MissingWeightsError) as e:
        load_clip(REPO)
    msg = str(e.value)
    for part in (f"hf download {REPO} config.json model.safetensors --local-dir {weights / REPO}",
                 f"huggingface-cli download {REPO}", str(weights / REPO), str(tmp_path / "hf_hub"),
                 "models--openai--clip-vit-base-patch16", "never downloads"):
        assert part in msg, part

    hf_a, hf_b = _random_hf_clip(_hf_config(), seed=1), _random_hf_clip(_hf_config(), seed=2)
    _fake_hub_snapshot(tmp_path / "hf_hub", REPO, _save_hf(hf_a, tmp_path / "a"))
    old = tmp_path / "hf_hub" / "models--openai--clip-vit-base-patch16" / "snapshots" / "old"
    old.mkdir()
    (old / "config.json").write_text("{}")  # an incomplete snapshot is passed over
    clip = load_clip(REPO)
    _compare_with_transformers(clip, hf_a)

    _save_hf(hf_b, weights / REPO)  # the tag2mask weights folder comes first
    _compare_with_transformers(load_clip(REPO), hf_b)


def test_a_sharded_hf_clipmodel_loads_like_one_file(tmp_path: Path) -> None:
    """transformers' own sharded save of a random CLIPModel, by folder and by hub name (in the HF cache, symlinked
    as huggingface_hub lays it out): the same model as from its one-file save."""
    hf = _random_hf_clip(_hf_config())
    hf.save_pretrained(tmp_path / "one")
    hf.save_pretrained(tmp_path / "sharded", max_shard_size="200KB")
    files = sorted(p.name for p in (tmp_path / "sharded").iterdir())
    assert "model.safetensors.index.json" in files and "model.safetensors" not in files
    assert sum(n.endswith(".safetensors") for n in files) > 2, files
    one = load_clip(tmp_path / "one").state_dict()
    for source in (tmp_path / "sharded", tmp_path / "sharded" / "model.safetensors.index.json"):
        sharded = load_clip(source).state_dict()
        assert set(sharded) == set(one) and all(torch.equal(sharded[k], one[k]) for k in one)
    _fake_hub_snapshot(tmp_path / "hf_hub", REPO, tmp_path / "sharded")
    from_cache = load_clip(REPO).state_dict()
    assert all(torch.equal(from_cache[k], one[k]) for k in one)


def test_open_clip_hub_repo_name(tmp_path: Path, tiny_archs: dict) -> None:
    repo = "laion/t2m-tiny"
    with pytest.raises(MissingWeightsError, match=f"hf download {repo} open_clip_model.safetensors --local-dir"):
        load_clip(repo, arch="t2m-tiny")
    ref = _open_clip("t2m-tiny")
    folder = Path(os.environ["TAG2MASK_WEIGHTS"]) / repo
    folder.mkdir(parents=True)
    torch.save(ref.state_dict(), folder / "open_clip_pytorch_model.bin")
    _assert_same_model(load_clip(repo, arch="t2m-tiny"), ref, nn.GELU, 64)


# ------------------------------------------------------------------------------ broken and hostile configs


@pytest.fixture(scope="module")
def hf_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One small HF CLIPModel folder; tests copy its weights beside a config.json of their own."""
    return _save_hf(_random_hf_clip(_hf_config()), tmp_path_factory.mktemp("hf") / "clip")


def _with_config(hf_files: Path, folder: Path, config: bytes | dict) -> Path:
    folder.mkdir()
    (folder / "model.safetensors").symlink_to(hf_files / "model.safetensors")
    data = config if isinstance(config, bytes) else json.dumps(config).encode()
    (folder / "config.json").write_bytes(data)
    return folder


def _edited(hf_files: Path, tower: str | None, **changes: Any) -> dict:
    config = json.loads((hf_files / "config.json").read_text())
    (config[tower] if tower else config).update(changes)
    return config


@pytest.mark.parametrize(
    ("name", "make", "message"),
    [
        ("not-json", lambda h: b"{not json", "not a JSON file"),
        ("binary", lambda h: bytes(range(256)) * 4, "not a JSON file"),
        ("list", lambda h: b"[1, 2, 3]", "not a JSON object"),
        ("deep", lambda h: b"[" * 200_000 + b"]" * 200_000, "not a JSON file"),
        ("huge-file", lambda h: b" " * (2 << 20) + b"{}", "config.json is 2097154 bytes: too large (at most 1048576)"),
        ("tower-not-object", lambda h: _edited(h, None, vision_config=[1]), "vision_config is not a JSON object"),
        ("absurd-width", lambda h: _edited(h, "vision_config", hidden_size=10**12, num_attention_heads=1),
         "disagree: vision_config.hidden_size is 1000000000000 in the config, 128 in the weights"),
        ("absurd-layers", lambda h: _edited(h, "text_config", num_hidden_layers=10**9),
         "text_config.num_hidden_layers is 1000000000 in the config, 2"),
        ("absurd-image", lambda h: _edited(h, "vision_config", image_size=10**6), "image_size"),
        ("zero-heads", lambda h: _edited(h, "text_config", num_attention_heads=0), "positive integer"),
        ("string-width", lambda h: _edited(h, "text_config", hidden_size="64"), "positive integer, not '64'"),
        ("float-layers", lambda h: _edited(h, "text_config", num_hidden_layers=2.0), "positive integer"),
        ("heads-not-dividing", lambda h: _edited(h, "vision_config", num_attention_heads=3), "not a multiple"),
        ("nan-eps", lambda h: _edited(h, "text_config", layer_norm_eps=float("nan")), "layer_norm_eps"),
        ("vocabulary", lambda h: _edited(h, "text_config", vocab_size=1000), "vocabulary of 1000 tokens"),
        ("context", lambda h: _edited(h, "text_config", max_position_embeddings=64), "context of 64"),
        ("eos", lambda h: _edited(h, "text_config", eos_token_id=1), "pooled at token id 1"),
        ("channels", lambda h: _edited(h, "vision_config", num_channels=4), "reads 4 channels"),
        ("model-type", lambda h: _edited(h, None, model_type="siglip"), "describes a 'siglip' model"),
        ("projection", lambda h: _edited(h, None, projection_dim=25), "projection_dim"),
    ],
)
def test_a_broken_config_is_one_clear_error(
    hf_files: Path, tmp_path: Path, name: str, make: Any, message: str
) -> None:
    folder = _with_config(hf_files, tmp_path / name, make(hf_files))
    with pytest.raises(Tag2MaskError, match=message.replace("(", r"\(").replace(")", r"\)")) as e:
        load_clip(folder)
    assert type(e.value) is Tag2MaskError


def test_a_vision_only_or_foreign_state_dict_is_refused(hf_files: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    sd = load_file(str(hf_files / "model.safetensors"))
    folder = tmp_path / "vision_only"
    _write_hf(folder, {k: v for k, v in sd.items() if not k.startswith("text_")}, _edited(hf_files, None))
    with pytest.raises(Tag2MaskError, match="not a full Hugging Face CLIPModel.*'text_model.embeddings.token_emb"):
        load_clip(folder)
    _write_hf(folder, {**sd, "vision_model.encoder.layers.0.adapter.weight": torch.zeros(2)}, _edited(hf_files, None))
    with pytest.raises(Tag2MaskError, match="'vision_model.encoder.layers.0.adapter.weight' is not a key"):
        load_clip(folder)
    del sd["text_model.encoder.layers.1.self_attn.k_proj.bias"]
    _write_hf(folder, sd, _edited(hf_files, None))
    with pytest.raises(Tag2MaskError, match="lacks a bias of q, k or v"):
        load_clip(folder)
