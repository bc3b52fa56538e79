"""Results follow the data: an image, its tags or an input file replaced in place is recomputed everywhere it is
read, the other images stay skipped, and a whole-split stage (prompt training) trains again."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tag2mask.cli import main
from tag2mask.data import make_synthetic_dataset
from tag2mask.stages.inputs import LEDGER, InputLedger


@pytest.fixture()
def setup(tmp_path: Path) -> tuple[Path, list[str]]:
    from tag2mask.models.tiny import tiny_clip
    from tag2mask.testing import save_openai_state_dict

    make_synthetic_dataset(tmp_path / "syn", n_train=6, n_val=1, size=(48, 64), seed=3)
    save_openai_state_dict(tiny_clip(seed=0, image_size=32), tmp_path / "clip.pt")
    overrides = [f"data.root={tmp_path / 'syn'}", f"models.clip={tmp_path / 'clip.pt'}",
                 f"runtime.cache_dir={tmp_path / 'cache'}", "runtime.device=cpu", "superpixels.source=slic",
                 "train.cls.max_iter=2", "train.cls.warmup_iter=1", "train.cls.batch_size=3",
                 "train.cls.augment.scale_low=40", "train.cls.augment.scale_high=48",
                 "train.cls.augment.short_thresh=32", "train.cls.augment.crop_size=32"]
    return tmp_path, overrides


def _computed(out: str, what: str) -> int:
    """The 'N computed now' count of a stage command's summary line starting with ``what``."""
    line = next(line for line in out.splitlines() if line.startswith(what))
    return int(re.search(r"\((\d+) (?:computed|imported) now", line).group(1))


def _replace_image(path: Path) -> None:
    """Write other pixels into ``path`` (same size), as a user fixing a photo in place would."""
    pixels = np.asarray(Image.open(path).convert("RGB")).copy()
    pixels[:8] = 255 - pixels[:8]
    Image.fromarray(pixels).save(path)
    st = path.stat()  # a later modification time even on coarse-clock file systems
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))


def test_a_replaced_image_or_changed_tag_is_recomputed_in_every_stage_and_only_it(
        setup: tuple[Path, list[str]], capsys: pytest.CaptureFixture[str]) -> None:
    base, overrides = setup
    run = ["--run", str(base / "run")]
    stages = [(["superpixels"], "superpixels:"), (["cams", "--task", "cls"], "cams cls:"),
              (["seeds", "--task", "cls"], "seeds coarse:")]
    assert main(["train", "--task", "cls", "--preset", "demo", *run, *overrides]) == 0
    for args, _ in stages:
        assert main([*args, *run]) == 0
    out = capsys.readouterr().out
    assert [_computed(out, what) for _, what in stages] == [6, 6, 6]
    seed_before = (base / "run" / "seeds_coarse" / "train_0002.png").read_bytes()

    def again() -> list[int]:
        for args, _ in stages:
            assert main([*args, *run]) == 0
        text = capsys.readouterr().out
        return [_computed(text, what) for _, what in stages]

    assert again() == [0, 0, 0]  # nothing changed: everything is skipped

    _replace_image(base / "syn" / "images" / "train_0002.png")
    assert again() == [1, 1, 1]  # that image, in every stage; the five others stay as they were
    assert (base / "run" / "seeds_coarse" / "train_0002.png").read_bytes() != seed_before

    csv = base / "syn" / "train.csv"  # a tag added to one image: its CAM and seed, not its superpixels
    row = next(line for line in csv.read_text().splitlines() if line.startswith("train_0004.png,"))
    added = next(c for c in ("circle", "square", "triangle", "ring", "cross") if c not in row.split(",")[1].split(";"))
    csv.write_text(csv.read_text().replace(row, f"{row};{added}", 1))
    assert again() == [0, 1, 1]
    with np.load(base / "run" / "cams_cls" / "train_0004.npz") as f:
        classes = ["circle", "square", "triangle", "ring", "cross"]
        assert classes.index(added) in f["fg_cls"].tolist()

    # the training reads every image: a replaced one trains again (the old context is not reused) ...
    assert main(["train", "--task", "cls", *run]) == 0
    assert "iterations 0..2" in capsys.readouterr().out
    assert again()[1:] == [6, 6]  # ... and new prompt weights give new CAMs (and seeds) for every image


def test_command_line_inputs_are_followed(setup: tuple[Path, list[str]], capsys: pytest.CaptureFixture[str]) -> None:
    base, overrides = setup
    run = ["--run", str(base / "run")]
    assert main(["train", "--task", "cls", "--preset", "demo", *run, *overrides]) == 0
    assert main(["cams", "--task", "cls", *run]) == 0
    capsys.readouterr()
    external = base / "external"  # --external: CAMs made elsewhere, one edited in place
    shutil.copytree(base / "run" / "cams_cls", external, ignore=shutil.ignore_patterns("*.json*"))
    assert main(["cams", "--task", "cls", "--external", str(external), *run]) == 0
    assert _computed(capsys.readouterr().out, "cams cls:") == 6  # another source: every file is read again
    with np.load(external / "train_0001.npz") as f:
        arrays = dict(f)
    arrays["cam"] = arrays["cam"] * 0.5
    np.savez(external / "train_0001.npz", **arrays)
    os.utime(external / "train_0001.npz", ns=(0, (external / "train_0001.npz").stat().st_mtime_ns + 2_000_000_000))
    assert main(["cams", "--task", "cls", "--external", str(external), *run]) == 0
    assert _computed(capsys.readouterr().out, "cams cls:") == 1

    # --weights: other prompt weights are read by value; the same bytes under another name change nothing
    ctx = base / "run" / "train_cls" / "ctx_final.safetensors"
    assert main(["cams", "--task", "cls", "--weights", str(ctx), *run]) == 0
    assert _computed(capsys.readouterr().out, "cams cls:") == 6  # from the imported CAMs back to computed ones
    shutil.copy(ctx, base / "same.safetensors")
    assert main(["cams", "--task", "cls", "--weights", str(base / "same.safetensors"), *run]) == 0
    assert _computed(capsys.readouterr().out, "cams cls:") == 0

    # --cams for the seeds: a CAM folder whose file changed gives that seed again
    assert main(["superpixels", *run]) == 0
    assert main(["seeds", "--task", "cls", "--cams", str(external), *run]) == 0
    assert _computed(capsys.readouterr().out, "seeds coarse:") == 6
    os.utime(external / "train_0003.npz", ns=(0, (external / "train_0003.npz").stat().st_mtime_ns + 2_000_000_000))
    assert main(["seeds", "--task", "cls", "--cams", str(external), *run]) == 0
    assert _computed(capsys.readouterr().out, "seeds coarse:") == 1


def test_the_pipeline_trains_again_after_the_data_changed(setup: tuple[Path, list[str]],
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    base, overrides = setup
    overrides = [*overrides, "train.seg.max_iter=2", "train.seg.warmup_iter=1", "train.seg.batch_size=3",
                 "train.seg.augment.scale_low=40", "train.seg.augment.scale_high=48",
                 "train.seg.augment.short_thresh=32", "train.seg.augment.crop_size=32"]
    run_dir = base / "run"
    assert main(["run", "--preset", "demo", "--run-dir", str(run_dir), *overrides]) == 0
    assert main(["run", "--run-dir", str(run_dir)]) == 0
    assert capsys.readouterr().out.count("done earlier, skipped") == 7
    _replace_image(base / "syn" / "images" / "train_0000.png")
    assert main(["run", "--run-dir", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "[1/8] superpixels: images 6, computed 1" in out
    assert "done earlier" not in out  # every later stage read the changed image (through the trained prompts)
    assert main(["run", "--run-dir", str(run_dir)]) == 0
    assert capsys.readouterr().out.count("done earlier, skipped") == 7


def test_the_ledger_survives_a_torn_line_and_adopts_an_old_folder(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(b"x")
    (tmp_path / "b.png").write_bytes(b"x")
    inputs = {"a": 1, "b": 1, "c": 1}
    ledger = InputLedger(tmp_path, lambda k: inputs[k])
    output = lambda k: tmp_path / f"{k}.png"  # noqa: E731
    # a folder of tag2mask 0.1 (outputs, no ledger): its outputs are taken as they are, and recorded
    assert ledger.pending(["a", "b", "c"], output) == ["c"] and (tmp_path / LEDGER).is_file()
    assert InputLedger(tmp_path, lambda k: inputs[k]).done(["a", "b", "c"], output) == 2
    inputs["b"] = 2  # b's input changed
    assert InputLedger(tmp_path, lambda k: inputs[k]).pending(["a", "b", "c"], output) == ["b", "c"]
    with open(tmp_path / LEDGER, "a") as f:  # killed while appending b's new line
        f.write(json.dumps({"id": "b", "input": InputLedger(tmp_path, lambda k: inputs[k]).digest("b")})[:-7])
    fresh = InputLedger(tmp_path, lambda k: inputs[k])
    assert fresh.pending(["a", "b", "c"], output) == ["b", "c"]
    fresh.record("b")  # the next line is whole again, after the torn one
    assert InputLedger(tmp_path, lambda k: inputs[k]).pending(["a", "b", "c"], output) == ["c"]
