"""The CoOp prompt learner: prompt layout, seeded initialisation, text encoding, context persistence."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

from tag2mask.errors import Tag2MaskError
from tag2mask.models.prompts import PromptLearner, encode_prompts, hash_seed

M = 4


@pytest.fixture(scope="module")
def tiny() -> torch.nn.Module:
    from tag2mask.models.tiny import tiny_clip

    return tiny_clip(seed=1, image_size=64)


def _tokenize(text: str) -> torch.Tensor:
    from open_clip import tokenize

    return tokenize([text])[0]


def test_hash_seed_is_sha1_mod_2_32() -> None:
    assert hash_seed(7) == 7
    assert hash_seed("真") == int(hashlib.sha1("真".encode()).hexdigest(), 16) % 2**32
    assert hash_seed("真") != hash_seed("机")


def test_initialisation_follows_the_seeded_stream(tiny: torch.nn.Module) -> None:
    learner = PromptLearner(tiny, ["cat"], ["sky"], n_ctx=M, ctx_std=0.015, seed="真")
    torch.manual_seed(hash_seed("真"))
    expected = torch.empty(M, 128)
    torch.nn.init.normal_(expected, std=0.015)  # what the reference does with the global generator
    assert torch.equal(learner.ctx.data, expected)
    csc = PromptLearner(tiny, ["cat"], ["sky"], n_ctx=M, class_specific=True, ctx_std=0.0125, seed="机")
    assert csc.ctx.shape == (2, M, 128)
    assert abs(float(csc.ctx.detach().std()) - 0.0125) < 0.003


@pytest.mark.parametrize("position", ["end", "front"])
def test_prompt_layout(tiny: torch.nn.Module, position: str) -> None:
    names = ["traffic light", ""]
    learner = PromptLearner(tiny, names[:1], names[1:], n_ctx=M, class_specific=True, name_position=position)
    prompts = learner()
    emb = tiny.token_embedding
    assert prompts.shape == (2, 77, 128)
    for i, name in enumerate(names):
        tokens = _tokenize(f"{' '.join(['X'] * M)} {name}." if name else f"{' '.join(['X'] * M)}.")
        n_name = 2 if name else 0  # "traffic light" is two BPE tokens
        row = prompts[i]
        assert torch.equal(row[0], emb.weight[tokens[0]])  # SOS
        if position == "end" or not name:
            ctx_at, name_at = 1, 1 + M
        else:
            ctx_at, name_at = 1 + n_name, 1
        assert torch.equal(row[ctx_at : ctx_at + M], learner.ctx[i])
        assert torch.equal(row[name_at : name_at + n_name], emb.weight[tokens[1 + M : 1 + M + n_name]])
        rest = 1 + M + n_name
        assert torch.equal(row[rest:], emb.weight[tokens[rest:]])  # ".", EOT, padding


def test_text_encoder_equals_clip_when_the_context_is_the_placeholder(tiny: torch.nn.Module) -> None:
    names = ["cat", "traffic light", ""]
    learner = PromptLearner(tiny, names, [], n_ctx=M)
    x_embedding = tiny.token_embedding.weight[_tokenize("X")[1]]
    with torch.no_grad():
        learner.ctx.copy_(x_embedding.expand(M, -1))
        ours = encode_prompts(tiny, learner(), learner.tokens)
        texts = [f"{' '.join(['X'] * M)} {n}." if n else f"{' '.join(['X'] * M)}." for n in names]
        from open_clip import tokenize

        theirs = tiny.encode_text(tokenize(texts))
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


def test_context_round_trip_and_shape_check(tiny: torch.nn.Module, tmp_path: Path) -> None:
    a = PromptLearner(tiny, ["cat", "dog"], ["sky"], n_ctx=M, class_specific=True, seed=1)
    b = PromptLearner(tiny, ["cat", "dog"], ["sky"], n_ctx=M, class_specific=True, seed=2)
    a.save_context(tmp_path / "ctx.safetensors")
    assert not torch.equal(a.ctx, b.ctx)
    b.load_context(tmp_path / "ctx.safetensors")
    assert torch.equal(a.ctx, b.ctx)
    shared = PromptLearner(tiny, ["cat", "dog"], ["sky"], n_ctx=M)
    with pytest.raises(Tag2MaskError, match="does not fit"):
        shared.load_context(tmp_path / "ctx.safetensors")
    assert [k for k, _ in a.named_parameters()] == ["ctx"]


def test_bad_arguments(tiny: torch.nn.Module) -> None:
    with pytest.raises(ValueError, match="name_position"):
        PromptLearner(tiny, ["cat"], n_ctx=M, name_position="middle")
    with pytest.raises(Tag2MaskError, match="longer than 77"):
        PromptLearner(tiny, ["word " * 80], n_ctx=M)


def test_the_learner_lives_on_its_clips_device() -> None:
    # built from a CLIP on a GPU, the tokens, embeddings and context are there too (seen on an H200: a learner
    # built on the CPU beside a CUDA CLIP failed in token_embedding). The meta device stands in for a GPU here,
    # and the context is the CPU-seeded one whatever the device.
    from tag2mask.models.tiny import tiny_clip

    clip = tiny_clip(seed=1, image_size=64)
    on_cpu = PromptLearner(clip, ["cat", "dog"], ["sky"], n_ctx=M, seed=3)
    on_meta = PromptLearner(clip.to("meta"), ["cat", "dog"], ["sky"], n_ctx=M, seed=3)
    tensors = dict([*on_meta.named_parameters(), *on_meta.named_buffers()])
    assert set(tensors) == {"ctx", "tokens", "token_prefix", "token_suffix"}
    assert all(t.device.type == "meta" for t in tensors.values())
    assert on_meta.ctx.shape == on_cpu.ctx.shape and on_meta.ctx.dtype == torch.float32
