"""CLIP loading by round trip: random models saved in OpenAI's layouts load back with the same outputs."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from open_clip.model import CLIP, build_model_from_openai_state_dict
from open_clip.transformer import QuickGELU

from tag2mask.errors import MissingWeightsError, Tag2MaskError
from tag2mask.models.clip import clip_tokenizer, load_clip
from tag2mask.models.tiny import tiny_clip
from tag2mask.testing import openai_state_dict, save_openai_state_dict, save_openai_torchscript

# The real ViT-B/16 of the paper (SPEC §1.1): vision width 768, 12 layers, 12 heads; text width 512, 12 layers.
VIT_B_16 = dict(width=768, layers=12, heads=12, embed_dim=512, text_width=512, text_layers=12, text_heads=8)
PROMPTS = ["a photo of a dog.", "X X X X aeroplane."]
METADATA = {"input_resolution", "context_length", "vocab_size"}


def _inputs(size: int = 224) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(1, 3, size, size, generator=g), clip_tokenizer()(PROMPTS)


def _through(model: CLIP, dtype: torch.dtype) -> CLIP:
    """``model`` with its weights rounded through ``dtype`` (what a checkpoint in that dtype holds), float32."""
    model.load_state_dict({k: v.to(dtype).float() for k, v in model.state_dict().items()})
    return model


def _assert_same_outputs(loaded: CLIP, ref: CLIP, image: torch.Tensor, text: torch.Tensor) -> None:
    with torch.no_grad():
        pairs = [(loaded.encode_image(image), ref.encode_image(image))]
        pairs.append((loaded.encode_text(text), ref.encode_text(text)))
        for a, b in pairs:
            assert a.dtype == torch.float32 and a.shape == b.shape
            assert (a - b).abs().max() <= 1e-5 * b.abs().max()


def _assert_frozen_quickgelu(model: CLIP) -> None:
    assert not model.training
    assert all(not p.requires_grad and p.dtype == torch.float32 for p in model.parameters())
    blocks = [*model.visual.transformer.resblocks, *model.transformer.resblocks]
    assert all(isinstance(b.mlp.gelu, QuickGELU) for b in blocks)


# ---------------------------------------------------------------- tiny model: every layout and dtype (fast)


TINY_SEED = 3
DTYPES = {"fp16": torch.float16, "fp32": torch.float32}


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[tuple[str, str], Path]]:
    """``tiny_clip(seed=TINY_SEED)`` saved once in each layout and dtype: ``{(layout, dtype name): path}``."""
    model = tiny_clip(seed=TINY_SEED)
    d = tmp_path_factory.mktemp("tiny_clip")
    files = {}
    for layout, save in (("state_dict", save_openai_state_dict), ("torchscript", save_openai_torchscript)):
        for name, dtype in DTYPES.items():
            files[layout, name] = d / f"{layout}-{name}.pt"
            save(model, files[layout, name], dtype=dtype)
    yield files
    shutil.rmtree(d)  # removed when the module ends


@pytest.mark.parametrize("layout", ["state_dict", "torchscript"])
@pytest.mark.parametrize("dtype", ["fp16", "fp32"])
def test_tiny_round_trip(tiny_files: dict[tuple[str, str], Path], layout: str, dtype: str) -> None:
    loaded = load_clip(tiny_files[layout, dtype])
    _assert_frozen_quickgelu(loaded)
    assert loaded.logit_scale.exp().item() == pytest.approx(100.0, rel=1e-3)
    image, text = _inputs()
    _assert_same_outputs(loaded, _through(tiny_clip(seed=TINY_SEED), DTYPES[dtype]), image, text)
    if dtype == "fp32":  # an fp32 file keeps full precision (open_clip's builder rounds to fp16 on its own)
        model = tiny_clip(seed=TINY_SEED)
        assert all(torch.equal(v, model.state_dict()[k]) for k, v in loaded.state_dict().items())


def test_tiny_is_deterministic_and_seeded() -> None:
    a, b, c = tiny_clip(seed=0), tiny_clip(seed=0), tiny_clip(seed=1)
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
    assert not torch.equal(a.visual.conv1.weight, c.visual.conv1.weight)
    with pytest.raises(ValueError, match="64"):
        tiny_clip(width=64, heads=2)  # OpenAI layout infers heads = width // 64


def test_state_dict_wrapped_under_state_dict_key(tmp_path: Path) -> None:
    model = tiny_clip()
    torch.save({"state_dict": openai_state_dict(model, torch.float32), "epoch": 3}, tmp_path / "wrapped.pt")
    loaded = load_clip(tmp_path / "wrapped.pt")
    image, text = _inputs()
    _assert_same_outputs(loaded, model, image, text)


def test_loader_uses_quickgelu_not_gelu(tiny_files: dict[tuple[str, str], Path]) -> None:
    """A loader that forgot QuickGELU (open_clip's plain configs use exact GELU) gives different features."""
    loaded = load_clip(tiny_files["state_dict", "fp32"])
    sd = openai_state_dict(tiny_clip(seed=TINY_SEED), torch.float32)
    gelu = build_model_from_openai_state_dict(dict(sd), quick_gelu=False, cast_dtype=None).float()
    gelu.load_state_dict(sd)
    image, text = _inputs()
    with torch.no_grad():
        pairs = [(loaded.encode_image(image), gelu.encode_image(image))]
        pairs.append((loaded.encode_text(text), gelu.encode_text(text)))
        for a, b in pairs:
            assert (a - b).abs().max() > 1e-3 * b.abs().max()


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch >= 2.9 flags torch.jit.load as deprecated
def test_torchscript_archive_layout(tiny_files: dict[tuple[str, str], Path]) -> None:
    archive = torch.jit.load(str(tiny_files["torchscript", "fp16"]), map_location="cpu")
    sd = archive.state_dict()
    assert set(sd) == set(tiny_clip().state_dict()) | METADATA  # no attn_mask, like OpenAI's archives
    assert int(sd["input_resolution"]) == 224 and int(sd["context_length"]) == 77 and int(sd["vocab_size"]) == 49408
    assert all(v.dtype == torch.float16 for k, v in sd.items() if k not in METADATA)
    assert all(hasattr(archive, m) for m in ("encode_image", "encode_text", "forward"))


# ---------------------------------------------------------------- real ViT-B/16 shape (one build, ~300 MB files)


@pytest.fixture(scope="module")
def vit_b_16(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[CLIP, Path, Path]]:
    """A random CLIP of the real ViT-B/16 shape saved as an fp16 state dict and as TorchScript (~300 MB each);
    returns it with its weights rounded through fp16 (what the files hold) as the reference."""
    model = tiny_clip(seed=0, **VIT_B_16)
    d = tmp_path_factory.mktemp("vit_b_16")
    save_openai_state_dict(model, d / "ViT-B-16-sd.pt")
    save_openai_torchscript(model, d / "ViT-B-16.pt")
    yield _through(model, torch.float16), d / "ViT-B-16-sd.pt", d / "ViT-B-16.pt"
    shutil.rmtree(d)  # ~600 MB: removed when the module ends


@pytest.mark.parametrize("layout", ["state_dict", "torchscript"])
def test_full_size_vit_b_16_round_trip(vit_b_16: tuple[CLIP, Path, Path], layout: str) -> None:
    ref, sd_path, jit_path = vit_b_16
    loaded = load_clip(sd_path if layout == "state_dict" else jit_path)
    _assert_frozen_quickgelu(loaded)
    assert loaded.visual.conv1.weight.shape == (768, 3, 16, 16) and loaded.text_projection.shape == (512, 512)
    assert len(loaded.visual.transformer.resblocks) == 12 and len(loaded.transformer.resblocks) == 12
    assert loaded.visual.transformer.resblocks[0].attn.num_heads == 12
    assert loaded.transformer.resblocks[0].attn.num_heads == 8
    image, text = _inputs()
    _assert_same_outputs(loaded, ref, image, text)


# ---------------------------------------------------------------- by name, missing and broken files


def test_load_by_name_missing_then_found(
    tiny_files: dict[tuple[str, str], Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wdir = tmp_path / "weights"
    wdir.mkdir()
    monkeypatch.setenv("TAG2MASK_WEIGHTS", str(wdir))
    with pytest.raises(MissingWeightsError) as e:
        load_clip("ViT-B/16")
    msg = str(e.value)
    for part in ("ViT-B-16.pt", str(wdir), "TAG2MASK_WEIGHTS", "openaipublic"):
        assert part in msg
    shutil.copy(tiny_files["torchscript", "fp16"], wdir / "ViT-B-16.pt")
    loaded = load_clip("ViT-B/16")
    image, text = _inputs()
    _assert_same_outputs(loaded, _through(tiny_clip(seed=TINY_SEED), torch.float16), image, text)


def test_corrupt_file_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "ViT-B-16.pt"
    bad.write_bytes(bytes(torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0)).tolist()))
    with pytest.raises(Tag2MaskError, match="ViT-B-16.pt"):
        load_clip(bad)


def test_truncated_archive_is_a_clear_error(tiny_files: dict[tuple[str, str], Path], tmp_path: Path) -> None:
    data = tiny_files["torchscript", "fp16"].read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(Tag2MaskError, match="cut.pt"):
        load_clip(tmp_path / "cut.pt")


def test_not_a_clip_state_dict(tmp_path: Path) -> None:
    torch.save({"weight": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(Tag2MaskError, match="other.pt.*not an OpenAI-format CLIP"):
        load_clip(tmp_path / "other.pt")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(Tag2MaskError, match="list.pt"):
        load_clip(tmp_path / "list.pt")


def test_tokenizer_is_openai_bpe() -> None:
    tokens = clip_tokenizer()(PROMPTS)
    assert tokens.shape == (2, 77) and tokens.dtype == torch.long
    assert (tokens[:, 0] == 49406).all()  # <start_of_text>
    assert tokens[0].argmax().item() == 7 and tokens[0, 7].item() == 49407  # "a photo of a dog ." + <end_of_text>
