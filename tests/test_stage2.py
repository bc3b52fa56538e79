"""Stage II end to end on the demo run: train-seg on the fine seeds, predict, refine, evaluate, resume, errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("segmentation_models_pytorch")

from tag2mask.cli import main  # noqa: E402
from tag2mask.errors import DataError, MissingWeightsError  # noqa: E402
from tag2mask.metrics import ConfusionMatrix  # noqa: E402
from tag2mask.segmenters.predictions import load_prediction, prediction_labels  # noqa: E402
from tag2mask.stages.common import open_split  # noqa: E402
from tag2mask.resume import read_meta  # noqa: E402
from tag2mask.stages.rundir import RunDir  # noqa: E402
from tag2mask.stages.train_seg import run_train_seg  # noqa: E402
from tag2mask.io import read_label_png  # noqa: E402

# a small DeepLabV3+: ResNet-18 encoder, no pretrained weights, the demo recipe's 64-px crops
SMALL_DLV3 = ["backbone=resnet18", "backbone_weights=none", "output_stride=16", "batch_size=8"]
TINY_M2F = ["backbone=tiny", "backbone_weights=none", "batch_size=4"]


@pytest.fixture(scope="module")
def trained(demo_run: tuple[Path, str]):  # -> tuple[RunDir, TrainSegResult]
    run = RunDir.open(demo_run[0])
    result = run_train_seg(run, "deeplabv3plus", [*SMALL_DLV3, "max_iter=200", "val_every=200", "log_every=20",
                                                  "checkpoint_every=100"], show_progress=False)
    return run, result


@pytest.fixture(autouse=True)
def _drop_networks_trained_by_the_test(demo_run: tuple[Path, str]):  # noqa: ANN202
    """Networks a test trains into the shared demo run are deleted when it ends (they are tens of MB each);
    those of module-scoped fixtures (set up before this) stay for the other tests."""
    import shutil

    root = demo_run[0] / "stage2"
    before = set(root.iterdir()) if root.is_dir() else set()
    yield
    for folder in (set(root.iterdir()) if root.is_dir() else set()) - before:
        shutil.rmtree(folder, ignore_errors=True)


def _all_background_miou(run: RunDir, split: str) -> float:
    dataset = open_split(run.config, split)
    conf = ConfusionMatrix(dataset.num_classes + 1)
    for image_id in dataset.ids:
        gt = dataset.load_mask(image_id)
        conf.update(np.zeros_like(gt), gt)
    return 100.0 * conf.miou()


def test_deeplab_trained_on_demo_seeds_clearly_beats_all_background(trained) -> None:
    run, result = trained
    assert result.iterations == result.total_iterations == 200 and result.resumed_from == 0
    baseline = _all_background_miou(run, "val")
    assert baseline < 20
    assert result.val and result.val[-1]["iter"] == 199
    assert result.val[-1]["miou"] > baseline + 30  # ~75 on this machine: it learnt the shapes from the seeds
    lines = [json.loads(x) for x in (result.out_dir / "metrics.jsonl").read_text().splitlines()]
    assert [x["iter"] for x in lines] == list(range(19, 200, 20))
    assert lines[-1]["loss"] < 0.5 * lines[0]["loss"]
    assert lines[0]["lr"] > lines[-1]["lr"] > 0  # poly decay towards min_lr
    # the weights are kept once: the last iteration is model.safetensors, and the resume state is dropped
    assert {p.name for p in (result.out_dir / "checkpoints").iterdir()} == {"iter_100.safetensors"}
    assert (result.out_dir / "model.safetensors").is_file()
    from safetensors import safe_open

    meta = read_meta(result.out_dir)
    assert meta["finished"] is True and meta["iteration"] == 200
    with safe_open(str(result.out_dir / "resume.safetensors"), "pt") as f:
        assert list(f.keys()) == []  # only the fact that it is finished, no second copy of the weights
    info = json.loads((result.out_dir / "model.json").read_text())
    assert info["net"] == "deeplabv3plus" and info["num_classes"] == 6 and info["total_iterations"] == 200
    assert run.is_done("stage2/deeplabv3plus", run.stage_record("stage2/deeplabv3plus").config_hash)


def test_predict_refine_and_evaluate_through_the_cli(trained, capsys: pytest.CaptureFixture[str]) -> None:
    run, result = trained
    assert main(["predict", "--checkpoint", str(result.out_dir)]) == 0
    pred = result.out_dir / "predictions_val"
    dataset = open_split(run.config, "val")
    assert sorted(p.stem for p in pred.glob("*.npz")) == sorted(dataset.ids)
    for image_id in dataset.ids[:3]:
        prob, fg = load_prediction(pred / f"{image_id}.npz")
        png = read_label_png(pred / f"{image_id}.png")
        assert prob.shape == (1 + len(fg), *png.shape) == (1 + len(fg), *dataset.load_mask(image_id).shape)
        assert np.array_equal(png, prediction_labels(prob, fg))
        assert set(np.unique(png)) - {0} == {int(c) + 1 for c in fg}  # kept classes: those that win somewhere
    evaluation = json.loads((pred / "evaluation.json").read_text())
    # the same inference as the validation during training (up to the float16 rounding of the stored values)
    assert 100 * evaluation["miou"] == pytest.approx(result.val[-1]["miou"], abs=0.2)
    assert json.loads((pred / "predict.json").read_text())["split"] == "val"
    capsys.readouterr()

    assert main(["refine", "--predictions", str(pred), "--sweep", "1", "2"]) == 2  # no val superpixels yet
    assert "tag2mask superpixels" in capsys.readouterr().err
    assert main(["superpixels", "--run", str(run.path), "--split", "val"]) == 0
    assert main(["refine", "--predictions", str(pred), "--sweep", "1", "2"]) == 0
    printed = capsys.readouterr().out
    assert "tuned on the ground truth of val" in printed and "network alone" in printed
    refined = result.out_dir / "predictions_val_sams"
    assert sorted(p.stem for p in refined.glob("*.png")) == sorted(dataset.ids)
    record = json.loads((refined / "refine.json").read_text())
    table = {row["alpha"]: row["miou"] for row in record["sweep"]}
    assert sorted(table) == [1.0, 2.0] and record["alpha"] == max(table, key=table.get)
    refined_eval = json.loads((refined / "evaluation.json").read_text())
    assert any("val" in line and "alpha" in line for line in refined_eval["protocol"]["tuned_on_gt"])

    # `tag2mask evaluate --pred` on a refined folder carries the same ground-truth-tuning label
    assert main(["evaluate", "--run", str(run.path), "--pred", str(refined), "--split", "val"]) == 0
    report = json.loads((run.path / "evaluate" / "predictions_val_sams_val.json").read_text())
    assert report["miou"] == pytest.approx(refined_eval["miou"])
    assert any("alpha" in line for line in report["protocol"]["tuned_on_gt"])


def test_predict_on_a_split_without_ground_truth(trained, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """As for the VOC test server: a split with tags but no masks gets its label PNGs (the argmax of the stored
    probabilities, ids 0..C) and no evaluation."""
    import shutil

    run, result = trained
    source = Path(run.config.data.root)
    root = tmp_path / "unlabelled"
    shutil.copytree(source, root, ignore=shutil.ignore_patterns("masks"))
    (root / "test.csv").write_text((source / "val.csv").read_text())
    out = tmp_path / "predictions_test"
    assert main(["predict", "--checkpoint", str(result.out_dir), "--split", "test", "--out", str(out),
                 f"data.root={root}"]) == 0
    printed = capsys.readouterr().out
    assert "mIoU" not in printed and not (out / "evaluation.json").exists()
    val = open_split(run.config, "val")
    assert sorted(p.stem for p in out.glob("*.png")) == sorted(val.ids)
    for image_id in val.ids[:3]:
        prob, fg = load_prediction(out / f"{image_id}.npz")
        png = read_label_png(out / f"{image_id}.png")
        assert png.shape == val.load_mask(image_id).shape and png.max() <= len(val.class_names)
        assert np.array_equal(png, prediction_labels(prob, fg))
    # SAMS refinement with a given alpha works there too (an alpha sweep needs ground truth)
    assert main(["superpixels", "--run", str(run.path), "--split", "test", f"data.root={root}"]) == 0
    assert main(["refine", "--predictions", str(out), "--run", str(run.path), "--split", "test", "--alpha", "2",
                 f"data.root={root}"]) == 0
    assert sorted(p.stem for p in (tmp_path / "predictions_test_sams").glob("*.png")) == sorted(val.ids)
    assert not (tmp_path / "predictions_test_sams" / "evaluation.json").exists()


@pytest.mark.parametrize(("net", "recipe"), [("deeplabv3plus", SMALL_DLV3), ("mask2former", TINY_M2F)])
def test_resumed_training_gives_the_same_weights_as_an_uninterrupted_run(
    demo_run: tuple[Path, str], net: str, recipe: list[str]
) -> None:
    from safetensors.torch import load_file

    run = RunDir.open(demo_run[0])
    common = [*recipe, "max_iter=5", "checkpoint_every=2", "val_every=0", "log_every=1"]
    straight = run_train_seg(run, net, common, name=f"{net}-straight", show_progress=False)
    first = run_train_seg(run, net, common, name=f"{net}-resumed", stop_at=3, show_progress=False)
    assert first.iterations == 3 and not (first.out_dir / "model.safetensors").exists()
    second = run_train_seg(run, net, common, name=f"{net}-resumed", show_progress=False)
    assert second.resumed_from == 3 and second.iterations == 5
    a = load_file(str(straight.out_dir / "model.safetensors"))
    b = load_file(str(second.out_dir / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert np.array_equal(a[k].numpy(), b[k].numpy()), k

    def losses(folder: Path) -> list[float]:
        return [json.loads(x)["loss"] for x in (folder / "metrics.jsonl").read_text().splitlines()]

    assert losses(straight.out_dir) == losses(second.out_dir) and len(losses(second.out_dir)) == 5


def test_tiny_mask2former_trains_and_predicts(demo_run: tuple[Path, str]) -> None:
    from tag2mask.stages.predict import resolve_checkpoint, run_predict

    run = RunDir.open(demo_run[0])
    result = run_train_seg(run, "mask2former", [*TINY_M2F, "max_iter=4", "checkpoint_every=3", "val_every=0"],
                           name="m2f-tiny", show_progress=False)
    assert result.iterations == 4 and np.isfinite(result.last_loss)
    checkpoint = resolve_checkpoint(result.out_dir / "checkpoints" / "iter_3.safetensors")
    assert checkpoint.tag == "iter_3"
    out = run_predict(run.config, checkpoint, "val", limit=2, flip=True, classes="all", show_progress=False)
    assert out.folder.name == "predictions_val_iter_3" and out.done == out.total == 2
    prob, fg = load_prediction(next(out.folder.glob("*.npz")))
    assert list(fg) == [0, 1, 2, 3, 4] and prob.shape[0] == 6
    assert np.allclose(prob.sum(axis=0), 1.0, atol=5e-3)  # all classes kept: a distribution (float16 on disk)


def test_missing_backbone_weights_fail_before_any_training(demo_run: tuple[Path, str]) -> None:
    run = RunDir.open(demo_run[0])
    with pytest.raises(MissingWeightsError) as e:
        run_train_seg(run, "deeplabv3plus", ["max_iter=1", "backbone=resnet101", "backbone_weights=auto"],
                      name="needs-resnet101", show_progress=False)
    assert "resnet101-63fe2227.pth" in str(e.value) and "download.pytorch.org" in str(e.value)
    with pytest.raises(MissingWeightsError) as e:
        run_train_seg(run, "mask2former", ["max_iter=1", "pretrain=in22k", "backbone=swin-l", "backbone_weights=auto"],
                      name="needs-swin", show_progress=False)
    assert "swin-large-patch4-window12-384-in22k" in str(e.value)
    assert not (run.path / "stage2" / "needs-resnet101").exists() and not (run.path / "stage2" / "needs-swin").exists()


def test_labels_folder_must_cover_the_training_split(demo_run: tuple[Path, str], tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    run = RunDir.open(demo_run[0])
    with pytest.raises(DataError, match=r"48 of 48 training images have no label PNG"):
        run_train_seg(run, "deeplabv3plus", SMALL_DLV3, labels_dir=tmp_path, show_progress=False)
    assert main(["train-seg", "--run", str(run.path), "--net", "deeplabv3plus", "--labels", str(tmp_path / "no"),
                 *SMALL_DLV3]) == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.skipif(sys.platform != "linux", reason="torchrun with gloo")
def test_train_seg_under_torchrun_trains_data_parallel(demo_run: tuple[Path, str], tmp_path: Path) -> None:
    from safetensors.torch import load_file

    run = RunDir.open(demo_run[0])
    args = ["train-seg", "--run-dir", str(run.path), "--net", "deeplabv3plus", "--name", "ddp", *SMALL_DLV3,
            "batch_size=4", "max_iter=3", "val_every=0", "log_every=1"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29541",
           "-m", "tag2mask.cli", *args]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "OMP_NUM_THREADS": "1", "TMPDIR": str(tmp_path)})
    assert r.returncode == 0, r.stderr[-3000:]
    out = run.path / "stage2" / "ddp"
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 3  # rank 0 logs the mean over ranks, once
    assert run.stage_record("stage2/ddp").status == "done"
    final = load_file(str(out / "model.safetensors"))
    assert all(np.isfinite(v.numpy()).all() for v in final.values())
    # it trained: the weights moved away from the recipe's seeded initialisation
    from tag2mask.segmenters.recipes import load_recipe
    from tag2mask.stages.train_seg import build_segmenter

    init = build_segmenter(load_recipe("deeplabv3plus", "synthetic", SMALL_DLV3), 6).state_dict()
    assert final.keys() == init.keys()
    moved = [k for k in final if k.endswith("weight") and not np.allclose(final[k].numpy(), init[k].numpy())]
    assert len(moved) > 0.9 * sum(k.endswith("weight") for k in final)


def test_show_prints_the_resolved_recipe_without_training(demo_run: tuple[Path, str],
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    import yaml

    run = RunDir.open(demo_run[0])
    assert main(["train-seg", "--run", str(run.path), "--net", "mask2former", "--show", "lr=0.5",
                 "--backbone", "swin-t"]) == 0
    printed = capsys.readouterr().out
    recipe = yaml.safe_load(printed)
    assert (recipe["net"], recipe["lr"], recipe["backbone"], recipe["batch_size"]) == ("mask2former", 0.5, "swin-t", 4)
    assert "# 1920 iterations on 48 training images (train)" in printed  # 160 epochs x 48 images / batch 4
    assert not (run.path / "stage2" / "mask2former").exists()
    assert main(["train-seg", "--run", str(run.path), "--net", "mask2former", "--show", "lr=fast"]) == 2
    assert "lr: expected a number" in capsys.readouterr().err


def test_each_torchrun_process_takes_its_own_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from tag2mask.stages.common import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert resolve_device("auto") == resolve_device("cuda") == "cuda:3"  # "auto" too: not every rank on GPU 0
    assert resolve_device("cuda:1") == "cuda:1" and resolve_device("cpu") == "cpu"
    monkeypatch.delenv("LOCAL_RANK")
    assert resolve_device("auto") == "cuda"


def test_ctrl_c_keeps_the_finished_iterations(demo_run: tuple[Path, str], monkeypatch: pytest.MonkeyPatch) -> None:
    from safetensors.torch import load_file

    from tag2mask.segmenters.deeplab import DeepLabV3PlusSegmenter

    run = RunDir.open(demo_run[0])
    common = [*SMALL_DLV3, "batch_size=4", "max_iter=5", "checkpoint_every=100", "val_every=0"]
    straight = run_train_seg(run, "deeplabv3plus", common, name="ki-straight", show_progress=False)
    real_loss, calls = DeepLabV3PlusSegmenter.loss, []

    def interrupted_loss(self, images, labels):  # noqa: ANN001, ANN202
        calls.append(1)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C in the middle of the 3rd iteration
        if len(calls) == 5:
            raise AssertionError("training went on after Ctrl-C")
        return real_loss(self, images, labels)

    monkeypatch.setattr(DeepLabV3PlusSegmenter, "loss", interrupted_loss)
    with pytest.raises(KeyboardInterrupt):
        run_train_seg(run, "deeplabv3plus", common, name="ki", show_progress=False)
    out = run.path / "stage2" / "ki"
    # the 3rd iteration finished, then the run stopped and saved its state there (no checkpoint was due)
    assert len(calls) == 3 and read_meta(out)["iteration"] == 3
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler is put back
    monkeypatch.setattr(DeepLabV3PlusSegmenter, "loss", real_loss)
    resumed = run_train_seg(run, "deeplabv3plus", common, name="ki", show_progress=False)
    assert resumed.resumed_from == 3
    a, b = load_file(str(straight.out_dir / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in a)


def test_a_finished_network_keeps_its_weights_once_and_is_not_trained_again(demo_run: tuple[Path, str]) -> None:
    from safetensors.torch import load_file

    run = RunDir.open(demo_run[0])
    common = [*SMALL_DLV3, "batch_size=4", "max_iter=4", "checkpoint_every=2", "val_every=0", "log_every=2"]
    first = run_train_seg(run, "deeplabv3plus", common, name="once", show_progress=False)
    files = sorted(str(p.relative_to(first.out_dir)) for p in first.out_dir.rglob("*.safetensors"))
    assert files == ["checkpoints/iter_2.safetensors", "model.safetensors", "resume.safetensors"]
    assert (first.out_dir / "resume.safetensors").stat().st_size < 1000  # the fact "finished", no tensors
    rows = [json.loads(x) for x in (first.out_dir / "metrics.jsonl").read_text().splitlines()]
    assert first.last_loss == rows[-1]["loss"]  # one definition of the last loss: the last logged row
    weights = load_file(str(first.out_dir / "model.safetensors"))
    stamp = (first.out_dir / "model.safetensors").stat().st_mtime_ns
    again = run_train_seg(run, "deeplabv3plus", common, name="once", show_progress=False)
    assert again.resumed_from == again.iterations == 4 and again.last_loss == first.last_loss
    assert (first.out_dir / "model.safetensors").stat().st_mtime_ns == stamp  # not rewritten
    assert all(np.array_equal(v.numpy(), load_file(str(first.out_dir / "model.safetensors"))[k].numpy())
               for k, v in weights.items())
    kept = run_train_seg(run, "deeplabv3plus", [*common, "keep_resume=true"], name="kept", show_progress=False)
    from safetensors import safe_open

    with safe_open(str(kept.out_dir / "resume.safetensors"), "pt") as f:  # asked for: the full state stays
        assert any(k.startswith("optim.") for k in f.keys()) and any(k.startswith("model.") for k in f.keys())


def test_another_recipe_is_refused_unless_overwrite(demo_run: tuple[Path, str]) -> None:
    from tag2mask.errors import Tag2MaskError

    run = RunDir.open(demo_run[0])
    common = [*SMALL_DLV3, "batch_size=4", "max_iter=2", "val_every=0"]
    first = run_train_seg(run, "deeplabv3plus", common, name="guarded", show_progress=False)
    with pytest.raises(Tag2MaskError, match=r"another recipe: lr: 0.01 -> 0.02.*--overwrite"):
        run_train_seg(run, "deeplabv3plus", [*common, "lr=0.02"], name="guarded", show_progress=False)
    assert (first.out_dir / "model.safetensors").is_file()  # nothing was deleted
    # neutral keys (logging, validation, test settings) are not another recipe
    again = run_train_seg(run, "deeplabv3plus", [*common, "log_every=1"], name="guarded", show_progress=False)
    assert again.resumed_from == 2
    replaced = run_train_seg(run, "deeplabv3plus", [*common, "lr=0.02"], name="guarded", overwrite=True,
                             show_progress=False)
    assert replaced.resumed_from == 0 and replaced.iterations == 2


def test_resuming_needs_no_backbone_file(demo_run: tuple[Path, str], tmp_path: Path) -> None:
    import torchvision

    run = RunDir.open(demo_run[0])
    weights = tmp_path / "resnet18-f37072fd.pth"
    torch = pytest.importorskip("torch")
    torch.save(torchvision.models.resnet18().state_dict(), weights)
    common = [*SMALL_DLV3, f"backbone_weights={weights}", "batch_size=4", "max_iter=3", "val_every=0"]
    run_train_seg(run, "deeplabv3plus", common, name="pretrained", stop_at=1, show_progress=False)
    weights.unlink()  # e.g. the job moved to a machine without the ImageNet file
    resumed = run_train_seg(run, "deeplabv3plus", common, name="pretrained", show_progress=False)
    assert resumed.resumed_from == 1 and resumed.iterations == 3


def test_predict_refuses_to_mix_settings_in_one_folder(trained) -> None:
    from tag2mask.errors import Tag2MaskError
    from tag2mask.stages.predict import resolve_checkpoint, run_predict

    run, result = trained
    checkpoint = resolve_checkpoint(result.out_dir)
    out = result.out_dir / "predictions_mixed"
    run_predict(run.config, checkpoint, "val", out, limit=2, show_progress=False)
    with pytest.raises(Tag2MaskError, match=r"other settings \(flip: False -> True\)"):
        run_predict(run.config, checkpoint, "val", out, limit=2, flip=True, show_progress=False)
    again = run_predict(run.config, checkpoint, "val", out, limit=2, show_progress=False)
    assert again.computed == 0 and again.done == 2


class _Killed(BaseException):
    """Stands for the process dying (kill -9) at the injected point."""


def test_a_kill_right_after_the_state_file_is_renamed_resumes_exactly(demo_run: tuple[Path, str],
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from safetensors.torch import load_file

    from tag2mask import io as tio

    run = RunDir.open(demo_run[0])
    common = [*SMALL_DLV3, "batch_size=4", "max_iter=5", "checkpoint_every=2", "val_every=0", "log_every=1"]
    straight = run_train_seg(run, "deeplabv3plus", common, name="kill-straight", show_progress=False)
    real_replace, saves = os.replace, []

    def replace(src: str, dst: str) -> None:
        real_replace(src, dst)
        if Path(dst).name == "resume.safetensors":
            saves.append(dst)
            if len(saves) == 2:  # the state of iteration 4 is in place: where 0.1.0 had yet to write resume.json
                raise _Killed

    with monkeypatch.context() as m:
        m.setattr(tio.os, "replace", replace)
        with pytest.raises(_Killed):
            run_train_seg(run, "deeplabv3plus", common, name="kill", show_progress=False)
    out = run.path / "stage2" / "kill"
    assert read_meta(out)["iteration"] == 4
    (out / "checkpoints" / ".iter_6.safetensors.q1w2.tmp").write_bytes(b"partial")  # a kill -9 leftover
    resumed = run_train_seg(run, "deeplabv3plus", common, name="kill", show_progress=False)
    assert resumed.resumed_from == 4 and not list(out.rglob(".*.tmp"))
    a, b = load_file(str(straight.out_dir / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in a)
