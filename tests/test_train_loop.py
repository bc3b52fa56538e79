"""Prompt training: schedule, sampling, loss decrease, exact resume, the Table S5 loss switch, DDP equivalence."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tag2mask.cli import main
from tag2mask.config import load_config
from tag2mask.data import open_dataset
from tag2mask.prompt_training.loop import checkpoint_iterations
from tag2mask.resume import iteration_indices
from tag2mask.prompt_training.schedule import learning_rate
from tag2mask.io import read_label_png


def test_schedule_equals_the_reference_scheduler() -> None:
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1e-3)
    w, m = 5, 20  # the reference: LinearLR with equal start/end factors, then cosine to 0 (SPEC §5.1)
    sched = torch.optim.lr_scheduler.SequentialLR(opt, [
        torch.optim.lr_scheduler.LinearLR(opt, 1e-2, 1e-2, total_iters=w),
        torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=m - w, eta_min=0)], milestones=[w])
    for t in range(m):
        assert learning_rate(t, 1e-3, m, w, 1e-5) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-12)
        opt.step()
        sched.step()
    assert learning_rate(4, 1e-3, m, w, 1e-5) == 1e-5 and learning_rate(5, 1e-3, m, w, 1e-5) == 1e-3  # the jump
    assert learning_rate(2, 1e-3, m, 4, 0.0, "linear") == pytest.approx(5e-4)


def test_sampling_is_a_seeded_permutation_per_epoch() -> None:
    batches = [iteration_indices(t, 10, 3, seed=0) for t in range(6)]  # 3 iterations per epoch, 1 image dropped
    first, second = np.concatenate(batches[:3]), np.concatenate(batches[3:])
    assert len(set(first)) == 9 and len(set(second)) == 9 and not np.array_equal(first, second)
    assert np.array_equal(iteration_indices(4, 10, 3, seed=0), batches[4])
    assert checkpoint_iterations(load_config("coco").train.cls) == {2050 * k for k in range(1, 11)} | {6150}


def _ctx(run: Path, task: str) -> torch.Tensor:
    from safetensors.torch import load_file

    return load_file(str(run / f"train_{task}" / "ctx_final.safetensors"))["ctx"]


def test_training_lowers_the_loss(prompt_env: dict) -> None:
    from tag2mask.cam import GradCAMClip
    from tag2mask.cam.image import clip_normalise
    from tag2mask.models.clip import load_clip
    from tag2mask.stages.common import build_prompt_learner
    from tag2mask.prompt_training.losses import multilabel_contrastive_loss

    run = prompt_env["base"] / "lower"
    assert main(["train", "--preset", "demo", "--run", str(run), "--task", "cls", *prompt_env["overrides"],
                 "train.cls.max_iter=12"]) == 0
    config = load_config(run / "config.yaml")
    ds = open_dataset("synthetic", prompt_env["root"], "train")
    clip = load_clip(prompt_env["base"] / "clip.pt")
    learner = build_prompt_learner(clip, config, "cls", ds.class_names)
    model = GradCAMClip(clip, learner)
    import PIL.Image

    images = clip_normalise(np.stack([np.asarray(PIL.Image.fromarray(ds.load_image(i)).resize((32, 32))) for i in ds.ids]))
    labels = torch.from_numpy(np.stack([ds.label_vector(i) for i in ds.ids]).astype(np.float32))

    def loss() -> float:
        with torch.no_grad():
            return float(multilabel_contrastive_loss(model(images, labels, compute_cam=False).fg_logits, labels))

    before = loss()
    learner.load_context(run / "train_cls" / "ctx_final.safetensors")
    assert loss() < 0.8 * before


def test_interrupted_and_resumed_equals_uninterrupted(prompt_env: dict) -> None:
    a, b = prompt_env["base"] / "full", prompt_env["base"] / "split"
    args = ["--preset", "demo", "--task", "cls", *prompt_env["overrides"], "train.cls.resume_every=100"]
    assert main(["train", "--run", str(a), *args]) == 0
    assert main(["train", "--run", str(b), *args, "--max-iter", "4"]) == 0
    assert not (b / "train_cls" / "ctx_final.safetensors").exists()
    assert main(["train", "--run", str(b), *args]) == 0
    assert torch.equal(_ctx(a, "cls"), _ctx(b, "cls"))
    lines = (b / "train_cls" / "metrics.jsonl").read_text().splitlines()
    assert [int(line.split('"iter": ')[1].split(",")[0]) for line in lines] == list(range(6))


@pytest.mark.parametrize("loss", ["mcl", "bce", "bce_manual", "bce_auto", "cal", "ce", "ce_manual", "ce_auto"])
def test_every_table_s5_loss_trains(prompt_env: dict, loss: str) -> None:
    task = "seg" if loss in ("cal", "ce", "ce_manual", "ce_auto") else "cls"
    run = prompt_env["base"] / f"loss_{loss}"
    extra = ["train.seg.loss_bias=0.0", "train.seg.loss_scale=1000.0"] if task == "seg" else []
    assert main(["train", "--preset", "demo", "--run", str(run), "--task", task, "--seeds", str(prompt_env["seeds"]),
                 *prompt_env["overrides"], f"train.{task}.loss={loss}", f"train.{task}.max_iter=2", *extra]) == 0
    lines = (run / f"train_{task}" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2 and all(np.isfinite(float(line.split('"loss": ')[1].split(",")[0])) for line in lines)
    from tag2mask.models.clip import load_clip
    from tag2mask.stages.common import build_prompt_learner

    config = load_config(run / "config.yaml")
    initial = build_prompt_learner(load_clip(prompt_env["base"] / "clip.pt"), config, task, open_dataset(
        "synthetic", prompt_env["root"], "train").class_names).ctx.detach()
    assert _ctx(run, task).shape == initial.shape and not torch.equal(_ctx(run, task), initial)


@pytest.mark.skipif(sys.platform != "linux", reason="torchrun with gloo")
def test_two_ranks_equal_one_process(prompt_env: dict) -> None:
    one, two = prompt_env["base"] / "one", prompt_env["base"] / "two"
    args = ["--preset", "demo", "--task", "seg", "--seeds", str(prompt_env["seeds"]), *prompt_env["overrides"],
            "train.seg.max_iter=3"]
    assert main(["train", "--run", str(one), *args]) == 0
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
           "-m", "tag2mask.cli", "train", "--run-dir", str(two), *args]  # torchrun would take --run as --run-path
    env_vars = {**os.environ, "OMP_NUM_THREADS": "1", "TMPDIR": str(prompt_env["base"])}  # torchrun's scratch: here
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env_vars)
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = _ctx(one, "seg"), _ctx(two, "seg")
    # same global batch, summed in another order: float32 noise only (the contexts move by ~0.5 here)
    assert float((a - b).abs().max()) < 2e-5 * float(a.abs().max())
    assert not torch.equal(_ctx(one, "seg"), torch.zeros_like(_ctx(one, "seg")))


def test_seg_task_uses_online_labels_from_the_crop(prompt_env: dict) -> None:
    from tag2mask.prompt_training.loop import PromptTrainData

    config = load_config("demo", prompt_env["overrides"])
    ds = open_dataset("synthetic", prompt_env["root"], "train")
    data = PromptTrainData(ds, config.train.seg, prompt_env["seeds"], need_label_map=True)
    for k in range(6):
        image, label, fg = data[(k % len(ds), 0, k)]
        assert image.shape == (3, 32, 32) and label.shape == (32, 32)
        present = {int(v) - 1 for v in torch.unique(label) if 0 < int(v) < 255}
        assert {int(c) for c in fg.nonzero()} == present
        assert torch.equal(data[(k % len(ds), 0, k)][0], image)  # same key, same augmentation
    seed = read_label_png(prompt_env["seeds"] / f"{ds.ids[0]}.png")
    assert seed.shape == (48, 64)
