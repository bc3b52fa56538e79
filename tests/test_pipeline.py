"""tag2mask run: every stage in order, skipped when done, resumed after an interruption."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tag2mask.cli import main
from tag2mask.data import make_synthetic_dataset
from tag2mask.stages.rundir import RunDir


@pytest.fixture(scope="module")
def overrides(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    from tag2mask.models.tiny import tiny_clip, tiny_sam
    from tag2mask.testing import save_openai_state_dict, save_sam_state_dict

    base = tmp_path_factory.mktemp("pipe")
    make_synthetic_dataset(base / "syn", n_train=8, n_val=2, size=(48, 64), seed=1)
    save_openai_state_dict(tiny_clip(seed=0, image_size=32), base / "clip.pt")
    save_sam_state_dict(tiny_sam(seed=0), base / "sam.pth")
    out = [f"data.root={base / 'syn'}", f"models.clip={base / 'clip.pt'}", f"models.sam={base / 'sam.pth'}",
           f"runtime.cache_dir={base / 'cache'}", "runtime.device=cpu", "superpixels.source=sam",
           "superpixels.points_per_side=4", "superpixels.pred_iou_thresh=0.0",
           "superpixels.stability_score_thresh=0.0", "superpixels.min_mask_region_area=0"]
    for t in ("cls", "seg"):
        out += [f"train.{t}.max_iter=3", f"train.{t}.warmup_iter=1", f"train.{t}.batch_size=4",
                f"train.{t}.augment.scale_low=40", f"train.{t}.augment.scale_high=48",
                f"train.{t}.augment.short_thresh=32", f"train.{t}.augment.crop_size=32"]
    return out


@pytest.fixture(scope="module")
def finished(overrides: list[str], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    import contextlib
    import io

    run_dir = tmp_path_factory.mktemp("run") / "run"
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(["run", "--preset", "demo", "--run-dir", str(run_dir), *overrides]) == 0
    return run_dir, buf.getvalue()


def test_segment_any_image_with_a_finished_run(finished: tuple[Path, str], overrides: list[str], tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    import numpy as np

    from tag2mask.io import read_label_png

    run_dir, _ = finished
    image = sorted((Path(overrides[0].split("=", 1)[1]) / "images").glob("*.png"))[0]
    assert main(["segment", str(image), "--classes", "circle, Square", "--run", str(run_dir),
                 "--out", str(tmp_path)]) == 0
    assert "circle" in capsys.readouterr().out
    mask = read_label_png(tmp_path / f"{image.stem}.png")
    assert mask.shape == (48, 64) and set(np.unique(mask)) <= {0, 1, 2}  # circle = 1, square = 2
    assert (tmp_path / f"{image.stem}_overlay.png").is_file()
    assert main(["segment", str(image), "--classes", "circle,dog", "--run", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert "'dog' not among the 5 classes this run was trained for: circle, square, triangle, ring, cross" in err


def test_run_makes_every_stage_then_skips_and_resumes(finished: tuple[Path, str],
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    run_dir, out = finished
    for i, name in enumerate(["superpixels", "train_cls", "cams_cls", "seeds_coarse", "train_seg", "cams_seg",
                              "seeds_fine", "evaluate"], start=1):
        assert f"[{i}/8] {name}" in out
    run = RunDir.open(run_dir)
    for stage in ("train_cls", "cams_cls", "seeds_coarse", "train_seg", "cams_seg", "seeds_fine"):
        assert run.stage_record(stage).status == "done"
    assert len(list((run_dir / "seeds_fine").glob("*.png"))) == 8
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert {"seeds_fine", "seeds_coarse", "argmax_cls", "argmax_seg", "all_background"} <= set(metrics)

    # a killed run: two fine seeds lost and the stage not marked done; the rerun redoes only those
    for p in sorted((run_dir / "seeds_fine").glob("*.png"))[:2]:
        p.unlink()
    manifest = json.loads((run_dir / "manifest.json").read_text())
    manifest["stages"]["seeds_fine"]["status"] = "running"
    (run_dir / "manifest.json").write_text(json.dumps(manifest))
    assert main(["run", "--run-dir", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert out.count("done earlier, skipped") == 6 and "[7/8] seeds_fine: images 8, computed 2" in out

    # a changed seeding setting redoes the fine seeds only
    assert main(["run", "--run-dir", str(run_dir), "seeds.fine.bg_power=0.9"]) == 0
    out = capsys.readouterr().out
    assert out.count("done earlier, skipped") == 6 and "[7/8] seeds_fine: images 8, computed 8" in out
