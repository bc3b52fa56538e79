"""Mixed precision, one way for every loop: ``torch.autocast`` on the device's own type with a chosen half dtype.

bfloat16 (the default, ``runtime.amp_dtype``) has float32's range, so gradients need no loss scaling; float16
does, so a ``GradScaler`` comes with it and only with it. Where a device cannot do bfloat16 (older GPUs) float16
is used instead. Parts that must stay exact (the Softmax-GradCAM gradient) turn autocast off locally.
"""

from __future__ import annotations

import contextlib

import torch

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


def amp_dtype(name: str, device: str | torch.device) -> torch.dtype:
    """The half dtype ``name`` names, or float16 when the CUDA device cannot do bfloat16."""
    dtype = DTYPES[name]
    kind = torch.device(device).type
    if dtype == torch.bfloat16 and kind == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.float16
    return dtype


def autocast(device: str | torch.device, dtype: torch.dtype, enabled: bool) -> contextlib.AbstractContextManager:
    """``torch.autocast`` on ``device``'s type (cuda, cpu, ...) with ``dtype``; a no-op when not ``enabled``."""
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)


def grad_scaler(device: str | torch.device, dtype: torch.dtype, enabled: bool, **kwargs) -> torch.amp.GradScaler | None:
    """A GradScaler for float16 mixed precision on CUDA, else None (bfloat16 and float32 need none)."""
    if enabled and dtype == torch.float16 and torch.device(device).type == "cuda":
        return torch.amp.GradScaler("cuda", **kwargs)
    return None
