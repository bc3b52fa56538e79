"""tag2mask demo: no weights, no downloads, and it must show the method working, not noise."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tag2mask.cli import main


def test_demo_fine_seeds_clearly_beat_argmax_and_all_background(demo_run: tuple[Path, str]) -> None:
    out, printed = demo_run
    assert "fine beats argmax by" in printed and "report.html" in printed
    m = json.loads((out / "metrics.json").read_text())
    best_argmax = max(m["argmax_cls"]["miou"], m["argmax_seg"]["miou"])  # even with its bg exponent tuned on GT
    assert m["seeds_fine"] > best_argmax + 10 and m["seeds_fine"] > m["all_background"] + 40
    assert len(list((out / "seeds_fine").glob("*.png"))) == 48
    html = (out / "report.html").read_text()
    assert "tiny-synthetic" in html and "felzenszwalb" in html and "http://" not in html and "https://" not in html


def test_segment_on_the_demo_run(demo_run: tuple[Path, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tag2mask.data import open_dataset
    from tag2mask.metrics import ConfusionMatrix
    from tag2mask.io import read_label_png

    out, _ = demo_run
    ds = open_dataset("synthetic", out / "synthetic", "val")  # images the demo never saw
    conf = ConfusionMatrix(6)
    for image_id in ds.ids[:4]:
        names = ",".join(ds.class_names[c] for c in ds[image_id].labels)
        assert main(["segment", str(ds[image_id].image_path), "--classes", names, "--run", str(out),
                     "--out", str(tmp_path)]) == 0
        conf.update(read_label_png(tmp_path / f"{Path(ds[image_id].image_path).stem}.png"), ds.load_mask(image_id))
    assert conf.miou() > 0.5  # text-to-mask works on new images, far above all-background (~0.15)
    capsys.readouterr()
    assert main(["segment", str(ds[ds.ids[0]].image_path), "--classes", "hexagon", "--run", str(out)]) == 2
    assert "'hexagon' not among the 5 classes" in capsys.readouterr().err


def test_a_killed_demo_resumes_to_the_same_files(demo_run: tuple[Path, str], tmp_path: Path) -> None:
    full, _ = demo_run
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "tag2mask.cli", "demo", "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and not any((out / "cams_cls").glob("*.npz")):
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # killed in the middle of the CAM stage
    proc.wait()
    assert not (out / "seeds_fine").exists()
    assert main(["demo", "--out", str(out)]) == 0
    for stage in ("seeds_coarse", "seeds_fine"):
        names = sorted(p.name for p in (full / stage).glob("*.png"))
        assert names == sorted(p.name for p in (out / stage).glob("*.png")) and len(names) == 48
        for name in names:
            assert (full / stage / name).read_bytes() == (out / stage / name).read_bytes(), (stage, name)
    for task in ("cls", "seg"):
        a = np.load(full / f"cams_{task}" / "train_0000.npz")
        b = np.load(out / f"cams_{task}" / "train_0000.npz")
        np.testing.assert_array_equal(a["cam"], b["cam"])


@pytest.mark.skipif(sys.platform != "linux", reason="torchrun with gloo")
def test_per_image_stages_under_torchrun_equal_one_process(demo_run: tuple[Path, str], tmp_path: Path) -> None:
    import re
    import shutil

    full, _ = demo_run
    # the same float arithmetic in every process; torchrun's scratch folders go to this test's folder
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TMPDIR": str(tmp_path)}
    runs = {}
    for name, launcher in (("one", []), ("two", ["-m", "torch.distributed.run", "--nproc_per_node", "2",
                                                   "--master_port", "29533"])):
        run = runs[name] = tmp_path / name
        (run / "train_cls").mkdir(parents=True)
        shutil.copy(full / "train_cls" / "ctx_final.safetensors", run / "train_cls")
        cmd = [sys.executable, *launcher, "-m", "tag2mask.cli", "cams", "--run-dir", str(run), "--preset", "demo",
               "--task", "cls", f"data.root={full / 'synthetic'}"]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
        assert r.returncode == 0, r.stderr[-2000:]
        if name == "two":
            computed = [int(n) for n in re.findall(r"\((\d+) computed now", r.stdout)]
            assert len(computed) == 2 and sum(computed) == 48  # each image done once, by one of the two ranks
    for path in sorted((runs["one"] / "cams_cls").glob("*.npz")):
        a, b = np.load(path), np.load(runs["two"] / "cams_cls" / path.name)
        np.testing.assert_array_equal(a["cam"], b["cam"])
        np.testing.assert_array_equal(a["fg_cls"], b["fg_cls"])
