"""The tag2mask command: fast help, one-line errors, config printing."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import yaml

from tag2mask.cli import main
from tag2mask.config import config_from_dict, load_config

SUBCOMMANDS = ["superpixels", "cams", "train", "seeds", "evaluate", "run", "demo", "segment", "info", "config",
               "train-seg", "predict", "refine"]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tag2mask.cli", *args], capture_output=True, text=True, timeout=120)


def test_help_lists_every_subcommand_without_importing_torch() -> None:
    code = (
        "import sys, contextlib, io\n"
        "from tag2mask.cli import main\n"
        "buf = io.StringIO()\n"
        "with contextlib.redirect_stdout(buf):\n"
        "    try:\n"
        "        main(['--help'])\n"
        "    except SystemExit:\n"
        "        pass\n"
        "heavy = [m for m in ('torch', 'open_clip', 'segment_anything', 'cv2') if m in sys.modules]\n"
        "print(buf.getvalue()); print('HEAVY', heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60).stdout
    for name in SUBCOMMANDS:
        assert f"\n    {name} " in out or f"\n    {name}\n" in out, name
    assert "HEAVY []" in out


def test_config_show_prints_the_resolved_yaml(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "show", "voc", "seeds.fine.bg_power=0.75"]) == 0
    shown = config_from_dict(yaml.safe_load(capsys.readouterr().out))
    assert shown == load_config("voc", ["seeds.fine.bg_power=0.75"])
    assert shown.superpixels.pred_iou_thresh == 0.86 and shown.train.cls.max_iter == 1800


@pytest.mark.parametrize("preset", ["voc", "coco", "demo"])
def test_config_show_keeps_the_presets_source_comments(preset: str, capsys: pytest.CaptureFixture[str]) -> None:
    from tag2mask.config import preset_path

    assert main(["config", "show", preset, "seeds.fine.bg_power=0.75"]) == 0
    out = capsys.readouterr().out
    assert config_from_dict(yaml.safe_load(out)) == load_config(preset, ["seeds.fine.bg_power=0.75"])  # still YAML
    assert out.startswith(f"# tag2mask config: {preset}.yaml (comments: where each of its values comes from, from "
                          f"{preset_path(preset)})\n# changed on the command line: seeds.fine.bg_power=0.75\n")
    source = preset_path(preset).read_text()
    commented = [line for line in out.splitlines() if "  # " in line and not line.startswith("#")]
    assert len(commented) > 40  # the presets comment nearly every value
    for line in commented:  # each comment is the preset's own note for that key (or says it was overridden)
        note = line.split("  # ", 1)[1]
        assert note in source or note.startswith("set on the command line"), line
    if preset == "voc":
        assert "  clip: ViT-B/16  # SPEC §1.1: OpenAI ViT-B/16 (file ViT-B-16.pt)" in out
        assert "  bg_names:  # SPEC §2.2: 25" in out  # a comment on the continuation line of a flow list
        assert "    bg_power: 0.75  # set on the command line\n" in out


def test_config_errors_are_one_line_exit_2() -> None:
    r = _run("config", "show", "voc", "seeds.bg_power=0.7")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip() == (
        "tag2mask config: error: unknown config key 'seeds.bg_power' in seeds; "
        "did you mean seeds.coarse.bg_power or seeds.fine.bg_power?"
    )


def test_config_hashes_and_keys(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "hashes", "voc"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines][:2] == ["superpixels", "train_cls"] and len(lines) == 7
    assert main(["config", "keys", "--prefix", "seeds.fine."]) == 0
    assert "seeds.fine.bg_power" in capsys.readouterr().out.split()


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["superpixels", "--preset", "voc", "data.root=/nonexistent/VOC2012"], "VOC root folder not found"),
        (["run", "--preset", "voc", "--run-dir", "/tmp/t2m-never", "seeds.bg_power=0.7"], "unknown config key"),
        (["evaluate", "--preset", "nopreset", "--pred", "x"], "unknown preset 'nopreset'"),
        (["train-seg", "--run", "/tmp/t2m-never", "--net", "deeplabv3plus"], "not a tag2mask run directory"),
        (["predict", "--checkpoint", "/tmp/t2m-never/stage2/deeplabv3plus"], "train first (tag2mask train-seg)"),
        (["refine", "--predictions", "/tmp/t2m-never/predictions_val"], "run tag2mask predict first"),
    ],
)
def test_bad_command_line_input_is_one_line_and_exit_2(args: list[str], fragment: str) -> None:
    r = _run(*args)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.count("\n") == 1 and fragment in r.stderr


def _tiny_folder_dataset(tmp_path):  # noqa: ANN001, ANN202
    from tag2mask.data import make_synthetic_dataset

    return make_synthetic_dataset(tmp_path / "shapes", n_train=6, n_val=2, size=(48, 64))


def test_a_run_that_fails_before_its_first_stage_leaves_no_run_folder(tmp_path) -> None:  # noqa: ANN001
    data = _tiny_folder_dataset(tmp_path)
    run_dir = tmp_path / "run"
    common = ["run", "--preset", "demo", "--run-dir", str(run_dir), "data.dataset=folder", f"data.root={data}"]
    r = _run(*common, "train.seg.batch_size=4")  # the demo's cls batch of 8 does not fit 6 images
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert "train.cls.batch_size (8) larger than the training split 'train' (6 images)" in r.stderr
    assert "e.g. train.cls.batch_size=6 train.seg.batch_size=6" in r.stderr
    assert not run_dir.exists()
    r = _run(*common, "train.cls.batch_size=2", "train.seg.batch_size=2", "superpixels.source=sam",
             "models.sam_type=vit_h", "models.sam=vit_h")  # no SAM file in the (empty) weights folder
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "sam_vit_h_4b8939.pth" in r.stderr and "superpixels.source=felzenszwalb" in r.stderr.splitlines()[-1]
    assert not run_dir.exists()
    run_dir.mkdir()
    (run_dir / "notes.txt").write_text("mine")
    r = _run(*common, "train.seg.batch_size=4")
    assert r.returncode == 2 and sorted(p.name for p in run_dir.iterdir()) == ["notes.txt"]  # only ours removed


def test_an_error_inside_a_stage_prints_on_its_own_line(tmp_path) -> None:  # noqa: ANN001
    import json

    data = _tiny_folder_dataset(tmp_path)
    imports = tmp_path / "imports"  # quasi-superpixels made elsewhere; one file is broken, found mid-stage
    imports.mkdir()
    for i in range(6):
        counts = [0, 48 * 64] if i != 3 else [48 * 64, 2**62]
        (imports / f"train_{i:04d}.json").write_text(json.dumps([{"segmentation": {"size": [48, 64],
                                                                                   "counts": counts}}]))
    run_dir = tmp_path / "run"
    r = _run("run", "--preset", "demo", "--run-dir", str(run_dir), "data.dataset=folder", f"data.root={data}",
             "train.cls.batch_size=2", "train.seg.batch_size=2", f"superpixels.import_dir={imports}")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "superpixels import train:" in r.stderr  # the bar was on screen when it failed
    errors = [line for line in r.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and errors[0].startswith("tag2mask run: error: ") and "train_0003.json" in errors[0]


def test_not_a_run_directory_names_the_command_that_makes_one(tmp_path) -> None:  # noqa: ANN001
    r = _run("train-seg", "--run", str(tmp_path), "--net", "deeplabv3plus")
    assert r.returncode == 2
    assert f"tag2mask run --preset PRESET --run-dir {tmp_path}" in r.stderr and "tag2mask demo" in r.stderr


@pytest.mark.parametrize(("code", "fragment"), [
    ("ENOSPC", "no space left on the device"),
    ("EROFS", "read-only file system"),
    ("EACCES", "permission denied"),
])
def test_operating_system_failures_are_one_line(tmp_path, monkeypatch: pytest.MonkeyPatch,  # noqa: ANN001
                                                capsys: pytest.CaptureFixture[str], code: str, fragment: str) -> None:
    import errno

    from tag2mask import io as tio

    data = _tiny_folder_dataset(tmp_path)
    real, writes = tio.atomic_write, []

    def failing(path, mode="wb"):  # noqa: ANN001, ANN202 - the 5th file written meets a full / read-only disk
        writes.append(path)
        if len(writes) == 5:
            raise OSError(getattr(errno, code), os.strerror(getattr(errno, code)), str(path))
        return real(path, mode)

    monkeypatch.setattr(tio, "atomic_write", failing)
    args = ["run", "--preset", "demo", "--run-dir", str(tmp_path / "run"), "data.dataset=folder", f"data.root={data}",
            "train.cls.batch_size=2", "train.seg.batch_size=2"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and fragment in err[0] and str(writes[4]) in err[0] and "--debug shows the traceback" in err[0]
    writes.clear()
    with pytest.raises(OSError):
        main(["--debug", *args])  # the traceback, on demand


def test_a_symlinked_stage_folder_is_refused(tmp_path) -> None:  # noqa: ANN001
    from tag2mask.config import load_config
    from tag2mask.errors import Tag2MaskError
    from tag2mask.stages.rundir import RunDir

    run = RunDir.create(tmp_path / "run", load_config("demo"))
    target = tmp_path / "elsewhere"
    target.mkdir()
    (target / "precious.txt").write_text("keep")
    (run.path / "seeds_fine").symlink_to(target)
    with pytest.raises(Tag2MaskError, match="is a symbolic link"):
        run.begin_stage("seeds_fine", "abc")
    assert (target / "precious.txt").read_text() == "keep"


def test_a_stage_command_that_fails_at_once_leaves_no_run_folder(tmp_path) -> None:  # noqa: ANN001
    data = _tiny_folder_dataset(tmp_path)
    run_dir = tmp_path / "run"
    r = _run("cams", "--run", str(run_dir), "--preset", "demo", "--task", "cls", "data.dataset=folder",
             f"data.root={data}")  # no trained prompts yet
    assert r.returncode == 2 and "prompt weights for the cls task not found" in r.stderr
    assert not run_dir.exists()
    # a run with finished work keeps it when a later command fails
    assert _run("superpixels", "--run", str(run_dir), "--preset", "demo", "data.dataset=folder",
                f"data.root={data}").returncode == 0
    r = _run("cams", "--run", str(run_dir), "--task", "cls")
    assert r.returncode == 2 and (run_dir / "config.yaml").is_file() and (run_dir / "manifest.json").is_file()
