"""One owner per run directory and per quasi-superpixel cache folder; read-only commands leave config.yaml alone."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tag2mask.cli import main
from tag2mask.errors import Tag2MaskError
from tag2mask.lock import holding, lock_folder, release_all

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="fcntl locks")

HOLDER = """
import sys, time
from tag2mask.lock import lock_folder
lock_folder(sys.argv[1], "run directory", shared=sys.argv[2] == "shared")
print("locked", flush=True)
time.sleep(120)
"""


def _hold(folder: Path, mode: str = "exclusive") -> subprocess.Popen:
    """Another process holding ``folder``'s lock until it is killed."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder), mode], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
    return proc


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tag2mask.cli", *args], capture_output=True, text=True, timeout=300)


@pytest.fixture()
def shapes(tmp_path: Path) -> Path:
    from tag2mask.data import make_synthetic_dataset

    return make_synthetic_dataset(tmp_path / "shapes", n_train=4, n_val=1, size=(48, 64))


def _run_args(run_dir: Path, data: Path) -> list[str]:
    return ["run", "--preset", "demo", "--run-dir", str(run_dir), f"data.root={data}", "train.cls.batch_size=2",
            "train.seg.batch_size=2", "train.cls.max_iter=2", "train.seg.max_iter=2", "train.cls.warmup_iter=1",
            "train.seg.warmup_iter=1"]


def test_a_second_command_on_a_run_in_use_stops_and_a_killed_owner_is_taken_over(tmp_path: Path, shapes: Path) -> None:
    run_dir = tmp_path / "run"
    holder = _hold(run_dir)
    try:
        r = _cli(*_run_args(run_dir, shapes))
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
        assert f"run directory {run_dir.resolve()} in use by PID {holder.pid} since " in r.stderr
        assert not (run_dir / "config.yaml").exists()  # it touched nothing
    finally:
        holder.send_signal(signal.SIGKILL)  # kill -9: the lock goes with the process
        holder.wait()
    r = _cli(*_run_args(run_dir, shapes))
    assert r.returncode == 0, r.stderr[-2000:]
    assert (run_dir / "seeds_fine").is_dir()
    assert f"PID {holder.pid}" not in (run_dir / ".lock").read_text()  # the new owner wrote itself in


def test_shard_workers_share_a_folder_but_not_with_an_owner(tmp_path: Path) -> None:
    folder = tmp_path / "cache"
    first = _hold(folder, "shared")
    try:
        lock_folder(folder, "cache folder", shared=True)  # a second shard worker: fine
        release_all()
        with pytest.raises(Tag2MaskError, match=r"cache folder .* in use by "):
            lock_folder(folder, "cache folder")  # an exclusive owner: refused while workers run
    finally:
        first.kill()
        first.wait()
    with holding(folder, "cache folder"):
        pass  # free again


def test_a_cache_folder_being_computed_is_not_written_by_another(tmp_path: Path, shapes: Path) -> None:
    from tag2mask.config import load_config
    from tag2mask.stages.superpixels import superpixels_dir

    cache = tmp_path / "cache"
    overrides = [f"data.root={shapes}", f"runtime.cache_dir={cache}"]
    folder = superpixels_dir(load_config("demo", overrides), "train")
    holder = _hold(folder)
    try:
        r = _cli("superpixels", "--preset", "demo", *overrides)
        assert r.returncode == 2 and "quasi-superpixel cache folder" in r.stderr and f"PID {holder.pid}" in r.stderr
    finally:
        holder.kill()
        holder.wait()
    assert _cli("superpixels", "--preset", "demo", *overrides).returncode == 0
    holder = _hold(folder)
    try:  # a complete folder is only read: no lock needed, so a concurrent owner does not matter
        r = _cli("superpixels", "--preset", "demo", *overrides)
        assert r.returncode == 0 and "(0 computed now" in r.stdout
    finally:
        holder.kill()
        holder.wait()


def test_read_only_commands_never_rewrite_the_config(demo_run: tuple[Path, str], tmp_path: Path) -> None:
    run_dir = demo_run[0]
    config = run_dir / "config.yaml"
    before, stamp = config.read_bytes(), config.stat().st_mtime_ns
    time.sleep(0.01)
    assert main(["evaluate", "--run", str(run_dir), "--task", "seg", "seeds.fine.bg_power=0.9",
                 "--out", str(tmp_path / "eval")]) == 0
    assert main(["report", str(run_dir), "--out", str(tmp_path / "report.html")]) == 0
    assert main(["config", "show", "demo"]) == 0
    assert config.read_bytes() == before and config.stat().st_mtime_ns == stamp
