"""The learning-rate schedule of prompt training (SPEC §5.1, §13 item 10)."""

from __future__ import annotations

import math


def learning_rate(
    iteration: int, lr: float, max_iter: int, warmup_iter: int, warmup_lr: float, mode: str = "constant"
) -> float:
    """The learning rate of 0-based ``iteration``.

    ``mode="constant"`` (the reference): ``warmup_lr`` for ``t < W``, then cosine from ``lr`` to 0 over the
    remaining ``max_iter − W`` iterations — ``lr(t) = ½·lr·(1 + cos(π (t − W)/(max_iter − W)))`` — so the rate
    jumps from ``warmup_lr`` to ``lr`` at ``t = W`` (a ``LinearLR`` with equal start and end factors).
    ``mode="linear"``: the warm-up ramps linearly from ``warmup_lr`` to ``lr`` instead.
    """
    if not 0 <= iteration < max_iter:
        raise ValueError(f"iteration {iteration} outside 0..{max_iter - 1}")
    if iteration < warmup_iter:
        if mode == "constant":
            return warmup_lr
        if mode == "linear":
            return warmup_lr + (lr - warmup_lr) * iteration / warmup_iter
        raise ValueError(f"warm-up mode must be 'constant' or 'linear', got {mode!r}")
    span = max_iter - warmup_iter
    return 0.5 * lr * (1.0 + math.cos(math.pi * (iteration - warmup_iter) / span))
