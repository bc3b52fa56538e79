"""The resume state is one atomic unit: a kill at any point of saving it resumes to exactly the uninterrupted
result; torn logs and orphan temporary files of a killed run are cleaned up; a state of other settings is refused."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from tag2mask import io as tio
from tag2mask import resume
from tag2mask.cli import main
from tag2mask.errors import Tag2MaskError



def _ctx(run: Path, task: str) -> torch.Tensor:
    from safetensors.torch import load_file

    return load_file(str(run / f"train_{task}" / "ctx_final.safetensors"))["ctx"]


class _Killed(BaseException):
    """Stands for the process dying (kill -9): nothing after it runs."""


def _kill_at_save(monkeypatch: pytest.MonkeyPatch, nth: int, after_rename: bool) -> None:
    """Make the ``nth`` save of ``resume.safetensors`` die just before or just after its rename."""
    real_replace, calls = os.replace, []

    def replace(src: str, dst: str) -> None:
        if Path(dst).name == resume.FILE:
            calls.append(dst)
            if len(calls) == nth and not after_rename:
                raise _Killed
            real_replace(src, dst)
            if len(calls) == nth:
                raise _Killed  # the point between the two files of tag2mask 0.1.0
            return
        real_replace(src, dst)

    monkeypatch.setattr(tio.os, "replace", replace)


@pytest.mark.parametrize("after_rename", [False, True])
def test_a_kill_while_saving_the_state_resumes_exactly(prompt_env: dict, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch, after_rename: bool) -> None:
    args = ["--preset", "demo", "--task", "cls", *prompt_env["overrides"], "train.cls.resume_every=2"]
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    assert main(["train", "--run", str(straight), *args]) == 0
    with monkeypatch.context() as m:
        _kill_at_save(m, nth=2, after_rename=after_rename)  # the save after iteration 4
        with pytest.raises(_Killed):
            main(["train", "--run", str(killed), *args])
    folder = killed / "train_cls"
    assert resume.read_meta(folder)["iteration"] == (4 if after_rename else 2)
    # what else a kill -9 leaves: a temporary file, and a half-written last log line
    (folder / f".{resume.FILE}.x1y2z3.tmp").write_bytes(b"partial")
    with open(folder / "metrics.jsonl", "a", encoding="utf-8") as f:
        f.write('{"iter": 5, "lr": 0.1, "lo')
    assert main(["train", "--run", str(killed), *args]) == 0
    assert torch.equal(_ctx(straight, "cls"), _ctx(killed, "cls"))
    assert not list(folder.glob(".*.tmp"))
    lines = [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines()]
    assert [x["iter"] for x in lines] == list(range(6))


def test_a_state_saved_under_other_settings_is_refused(prompt_env: dict, tmp_path: Path) -> None:
    from tag2mask.prompt_training.loop import _load_resume

    folder = tmp_path / "train_cls"
    folder.mkdir()
    resume.save_state(folder, {"param_0": torch.zeros(3)}, {"iteration": 2, "config_hash": "aaaa", "scaler": None})
    p = torch.nn.Parameter(torch.ones(3))
    with pytest.raises(Tag2MaskError) as e:
        _load_resume(folder, [p], torch.optim.SGD([p], lr=0.1), None, "bbbb")
    message = str(e.value)
    assert "\n" not in message and "another config hash (aaaa here, bbbb now)" in message
    assert f"delete {folder} to train afresh" in message
    assert torch.equal(p.detach(), torch.ones(3))  # nothing was loaded


def test_unreadable_and_legacy_states(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    (tmp_path / resume.FILE).write_bytes(b"\x00" * 5)
    with pytest.raises(Tag2MaskError, match=r"is unreadable .*: delete it to start this training again"):
        resume.read_meta(tmp_path)
    # tag2mask 0.1.0: tensors without metadata, the iteration in resume.json beside them
    save_file({"param_0": torch.zeros(2)}, str(tmp_path / resume.FILE))
    (tmp_path / resume.LEGACY_META).write_text(json.dumps({"iteration": 7, "config_hash": "c"}))
    assert resume.read_meta(tmp_path) == {"iteration": 7, "config_hash": "c"}
    resume.save_state(tmp_path, {"param_0": torch.ones(2)}, {"iteration": 8, "config_hash": "c"})
    assert resume.read_meta(tmp_path)["iteration"] == 8 and not (tmp_path / resume.LEGACY_META).exists()
    assert torch.equal(resume.load_tensors(tmp_path)["param_0"], torch.ones(2))


def test_truncate_metrics_drops_later_and_torn_lines(tmp_path: Path) -> None:
    log = tmp_path / "metrics.jsonl"
    log.write_text('{"iter": 0, "loss": 1}\n{"iter": 1, "loss": 2}\nnot json\n{"iter": 2, "loss": 3}\n{"iter": 3, "lo')
    resume.truncate_metrics(log, 2)
    assert log.read_text() == '{"iter": 0, "loss": 1}\n{"iter": 1, "loss": 2}\n'


def test_remove_orphans_removes_only_temporary_files(tmp_path: Path) -> None:
    (tmp_path / "checkpoints").mkdir()
    keep = [tmp_path / "resume.safetensors", tmp_path / ".hidden", tmp_path / "checkpoints" / "iter_2.safetensors"]
    gone = [tmp_path / ".resume.safetensors.ab12.tmp", tmp_path / "checkpoints" / ".iter_4.safetensors.zz.tmp"]
    for p in keep + gone:
        p.write_bytes(b"x")
    assert sorted(resume.remove_orphans(tmp_path)) == sorted(gone)
    assert all(p.exists() for p in keep) and not any(p.exists() for p in gone)
