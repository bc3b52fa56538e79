"""Multi-process edges under torchrun (2 Gloo ranks on the CPU): every collective runs on every rank whatever its
data, so a rank with nothing to learn from or nothing to compute never leaves the others waiting, and a hang that
does happen becomes an error naming the rank after ``runtime.process_group_timeout``."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tag2mask.cli import main
from tag2mask.config import load_config

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="torchrun with gloo")


def _torchrun(args: list[str], base: Path, port: int, timeout: int = 300) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port), *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TMPDIR": str(base)}  # torchrun's scratch folders: the test's
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def _ctx(run: Path) -> torch.Tensor:
    from safetensors.torch import load_file

    return load_file(str(run / "train_seg" / "ctx_final.safetensors"))["ctx"]


def test_a_rank_without_a_positive_pair_neither_hangs_nor_changes_the_result(prompt_env: dict, tmp_path: Path) -> None:
    from tag2mask.data import open_dataset
    from tag2mask.resume import iteration_indices
    from tag2mask.io import read_label_png, write_label_png

    overrides = [*prompt_env["overrides"], "train.seg.max_iter=2", "runtime.process_group_timeout=30"]  # fail fast
    cfg = load_config("demo", overrides).train.seg
    assert cfg.sub_iter == 1 and cfg.batch_size == 4  # each rank gets 2 images of each iteration's 4
    ids = open_dataset("synthetic", prompt_env["root"], "train").ids
    first = iteration_indices(0, len(ids), cfg.batch_size, cfg.seed)
    rank0, rank1 = {ids[i] for i in first[:2]}, {ids[i] for i in first[2:4]}
    assert not rank0 & rank1
    seeds = tmp_path / "seeds"  # rank 1's seeds of the first iteration: all background, so nothing to learn
    shutil.copytree(prompt_env["seeds"], seeds)
    for image_id in rank1:
        write_label_png(seeds / f"{image_id}.png", np.zeros_like(read_label_png(seeds / f"{image_id}.png")))
    for image_id in rank0:
        assert read_label_png(seeds / f"{image_id}.png").any()
    args = ["--preset", "demo", "--task", "seg", "--seeds", str(seeds), *overrides]

    one, two = tmp_path / "one", tmp_path / "two"
    assert main(["train", "--run", str(one), *args]) == 0
    r = _torchrun(["-m", "tag2mask.cli", "train", "--run-dir", str(two), *args], tmp_path, 29531)
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = _ctx(one), _ctx(two)
    assert float((a - b).abs().max()) < 2e-5 * float(a.abs().max())  # the same global batch: float32 noise only


def test_more_ranks_than_images_in_a_per_image_stage(prompt_env: dict, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    overrides = [*prompt_env["overrides"], "train.cls.max_iter=1", f"runtime.cache_dir={tmp_path / 'cache'}"]
    assert main(["train", "--task", "cls", "--preset", "demo", "--run", str(run), *overrides]) == 0
    r = _torchrun(["-m", "tag2mask.cli", "cams", "--task", "cls", "--run-dir", str(run), "--limit", "1"],
                  tmp_path, 29533)
    assert r.returncode == 0, r.stderr[-3000:]  # rank 1 has no image: it waits at the barrier, not for ever
    assert len(list((run / "cams_cls").glob("*.npz"))) == 1
    assert "1/1 labelled images" in r.stdout


def test_the_whole_pipeline_on_two_ranks(prompt_env: dict, tmp_path: Path) -> None:
    run = tmp_path / "run"
    overrides = [*prompt_env["overrides"], f"runtime.cache_dir={tmp_path / 'cache'}", "runtime.process_group_timeout=60"]
    for task in ("cls", "seg"):
        overrides += [f"train.{task}.max_iter=1", f"train.{task}.warmup_iter=1"]
    r = _torchrun(["-m", "tag2mask.cli", "run", "--preset", "demo", "--run-dir", str(run), *overrides], tmp_path, 29537)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]  # a rank done first does not call its stage unfinished
    assert len(list((run / "seeds_fine").glob("*.png"))) == 8 and "[8/8] evaluate" in r.stdout
    r = _torchrun(["-m", "tag2mask.cli", "run", "--run-dir", str(run)], tmp_path, 29539)
    assert r.returncode == 0 and r.stdout.count("done earlier, skipped") == 7, r.stdout[-2000:]


_HANGING_RANK = """
import sys, time
import torch
import torch.distributed as dist
from tag2mask.errors import distributed_failure_message
from tag2mask.config import load_config
from tag2mask.stages.common import join_process_group

rank, world = join_process_group(load_config("demo", ["runtime.device=cpu", "runtime.process_group_timeout=3"]))
if rank == 1:
    time.sleep(20)  # hangs: never joins the collective
    sys.exit(0)
t0 = time.time()
try:
    dist.all_reduce(torch.ones(1))
except Exception as e:
    print(f"after {time.time() - t0:.0f} s:", distributed_failure_message(e))
    sys.exit(0)
print("no error")
"""


def test_a_hanging_rank_becomes_an_error_naming_the_rank(tmp_path: Path) -> None:
    script = tmp_path / "hang.py"
    script.write_text(_HANGING_RANK)
    r = _torchrun([str(script)], tmp_path, 29535, timeout=120)
    line = next((s for s in r.stdout.splitlines() if s.startswith("after")), "")
    assert "rank 0 of 2: a collective failed" in line, r.stdout[-2000:] + r.stderr[-2000:]
    assert "runtime.process_group_timeout" in line
    assert int(line.split()[1]) < 15  # the 3 s timeout, not the 20 s the other rank sleeps
