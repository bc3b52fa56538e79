"""CoOp prompt learner and the text encoder over pre-embedded prompts (SPEC §2, §1.5).

A prompt is the string ``"X X … X {name}."`` with ``n_ctx`` placeholder tokens, tokenised with CLIP's BPE
tokenizer and embedded with CLIP's (frozen) token embedding. The placeholder embeddings are replaced by the
learnable context ``ctx``:

* ``name_position="end"``:   ``[SOS][ctx_1..ctx_M][name][.][EOT][pad…]``
* ``name_position="front"``: ``[SOS][name][ctx_1..ctx_M][.][EOT][pad…]``

An empty name gives a purely learned prompt ``[SOS][ctx][.][EOT]``. The context is shared by all prompts
(``M×D``) or class-specific (``G×M×D``). Only the context is learned, saved and loaded (safetensors).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from tag2mask.errors import Tag2MaskError
from tag2mask.models.clip import clip_tokenizer
from tag2mask.io import atomic_write


def hash_seed(seed: int | str) -> int:
    """An integer seed; strings hash as ``int(sha1(utf8(s)).hexdigest(), 16) mod 2**32`` (SPEC §2.1)."""
    if isinstance(seed, int):
        return seed
    return int(hashlib.sha1(seed.encode("utf-8")).hexdigest(), 16) % (2**32)


class PromptLearner(nn.Module):
    """Learnable CoOp contexts for ``G = len(fg_names) + len(bg_names)`` prompts (foreground first).

    Args:
        clip_model: an open_clip ``CLIP`` (its token embedding builds the fixed prompt parts).
        fg_names, bg_names: class names; a name may be ``""`` (nameless, purely learned prompt).
        n_ctx: number of context tokens ``M``.
        class_specific: one context per prompt (``G×M×D``) instead of one shared (``M×D``).
        name_position: ``"end"`` or ``"front"``.
        ctx_std: the context is initialised from ``N(0, ctx_std²)``.
        seed: int, or a string hashed by :func:`hash_seed`; drives only this initialisation.
    """

    def __init__(
        self,
        clip_model: nn.Module,
        fg_names: Sequence[str],
        bg_names: Sequence[str] = (),
        n_ctx: int = 16,
        class_specific: bool = False,
        name_position: str = "end",
        ctx_std: float = 0.015,
        seed: int | str = 0,
    ) -> None:
        super().__init__()
        if name_position not in ("end", "front"):
            raise ValueError(f"name_position must be 'end' or 'front', got {name_position!r}")
        if n_ctx < 1:
            raise ValueError("n_ctx must be at least 1")
        self.fg_names = list(fg_names)
        self.bg_names = list(bg_names)
        self.names = self.fg_names + self.bg_names
        self.n_ctx = n_ctx
        self.class_specific = class_specific
        self.name_position = name_position

        tok = clip_tokenizer()
        context_length = int(clip_model.positional_embedding.shape[0])
        sot, eot = tok.encoder["<start_of_text>"], tok.encoder["<end_of_text>"]
        placeholder = " ".join(["X"] * n_ctx)
        tokens = torch.zeros(len(self.names), context_length, dtype=torch.long)
        name_lens = []
        for i, name in enumerate(self.names):
            ids = [sot, *tok.encode(f"{placeholder} {name}." if name else f"{placeholder}."), eot]
            if len(ids) > context_length:
                raise Tag2MaskError(f"prompt for class name {name!r} is longer than {context_length} tokens")
            tokens[i, : len(ids)] = torch.tensor(ids)
            name_lens.append(len(tok.encode(name)) if name else 0)
        device = clip_model.token_embedding.weight.device  # the learner lives where its CLIP does
        tokens = tokens.to(device)
        self.register_buffer("tokens", tokens, persistent=False)
        self.name_lens = name_lens

        with torch.no_grad():
            embedding = clip_model.token_embedding(tokens).float()
        self.register_buffer("token_prefix", embedding[:, :1].clone(), persistent=False)
        self.register_buffer("token_suffix", embedding[:, 1 + n_ctx :].clone(), persistent=False)

        width = embedding.shape[-1]
        shape = (len(self.names), n_ctx, width) if class_specific else (n_ctx, width)
        generator = torch.Generator().manual_seed(hash_seed(seed))
        ctx = torch.empty(shape, dtype=torch.float32).normal_(0.0, ctx_std, generator=generator)  # drawn on the CPU
        self.ctx = nn.Parameter(ctx.to(device))

    @property
    def num_prompts(self) -> int:
        return len(self.names)

    def forward(self) -> torch.Tensor:
        """The embedded prompts, ``G×context_length×D`` (float32)."""
        g = self.num_prompts
        ctx = self.ctx if self.class_specific else self.ctx.unsqueeze(0).expand(g, -1, -1)
        if self.name_position == "end":
            return torch.cat([self.token_prefix, ctx, self.token_suffix], dim=1)
        rows = []
        for i, n in enumerate(self.name_lens):
            suffix = self.token_suffix[i]
            rows.append(torch.cat([self.token_prefix[i], suffix[:n], ctx[i], suffix[n:]], dim=0))
        return torch.stack(rows)

    # -- persistence: only the context --------------------------------------------------------------------

    def save_context(self, path: str | Path) -> None:
        """Write the context to a safetensors file, atomically."""
        from safetensors.torch import save

        data = save({"ctx": self.ctx.detach().cpu().contiguous()}, metadata={"names": "|".join(self.names)})
        with atomic_write(path, "wb") as f:
            f.write(data)

    def load_context(self, path: str | Path) -> None:
        """Load a context saved by :meth:`save_context`; its shape must match this learner's."""
        from safetensors.torch import load_file

        ctx = load_file(str(path))["ctx"]
        if ctx.shape != self.ctx.shape:
            raise Tag2MaskError(f"{path}: context of shape {tuple(ctx.shape)} does not fit {tuple(self.ctx.shape)}")
        with torch.no_grad():
            self.ctx.copy_(ctx.to(self.ctx))


def encode_prompts(clip_model: nn.Module, prompts: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """CLIP's text transformer on pre-embedded prompts (SPEC §1.5): ``G×context_length×D`` → ``G×E``.

    The feature is taken at the EOT position, i.e. where the token id is largest.
    """
    dtype = clip_model.positional_embedding.dtype
    x = prompts.to(dtype) + clip_model.positional_embedding
    transformer = clip_model.transformer
    # open_clip >= 2.24 transformers take N×L×D whatever their internal layout; older ones took L×N×D
    sequence_first = not hasattr(transformer, "batch_first")
    if sequence_first:
        x = x.permute(1, 0, 2)
    x = transformer(x, attn_mask=clip_model.attn_mask)
    if sequence_first:
        x = x.permute(1, 0, 2)
    x = clip_model.ln_final(x)
    x = x[torch.arange(x.shape[0], device=x.device), tokens.argmax(dim=-1)]
    return x @ clip_model.text_projection
