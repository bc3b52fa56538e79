"""The tag2mask command: fast help, one-line errors, config printing."""

from __future__ import annotations

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
