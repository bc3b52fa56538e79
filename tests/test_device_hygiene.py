"""Device hygiene that a CPU can check: the dtype SAMS accumulates in per device, DDP's device ids, and
``runtime.deterministic``. (The CUDA paths themselves are exercised by ``benchmarks/gpu_check.py``.)"""

from __future__ import annotations

import pytest
import torch

from tag2mask.config import load_config


def test_sams_accumulates_in_float64_where_the_device_has_it() -> None:
    from tag2mask.superpixels.index import accumulation_dtype

    assert accumulation_dtype(torch.device("cpu")) == torch.float64
    assert accumulation_dtype(torch.device("cuda", 0)) == torch.float64
    assert accumulation_dtype(torch.device("mps")) == torch.float32  # MPS has no float64


def test_ddp_device_ids(monkeypatch: pytest.MonkeyPatch) -> None:
    from tag2mask.segmenters.loop import _ddp_device_ids

    assert _ddp_device_ids("cpu") is None
    assert _ddp_device_ids("cuda:3") == [3]
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 5)  # a bare "cuda" (no LOCAL_RANK): never [None]
    assert _ddp_device_ids("cuda") == [5]


def test_runtime_deterministic_turns_on_deterministic_algorithms(monkeypatch: pytest.MonkeyPatch) -> None:
    from tag2mask.stages.common import runtime_device

    before = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    try:
        assert runtime_device(load_config("demo", ["runtime.device=cpu"])) == "cpu"
        assert not torch.are_deterministic_algorithms_enabled()  # off by default
        assert runtime_device(load_config("demo", ["runtime.device=cpu", "runtime.deterministic=true"])) == "cpu"
        assert torch.are_deterministic_algorithms_enabled() and torch.is_deterministic_algorithms_warn_only_enabled()
        import os

        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
