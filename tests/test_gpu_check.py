"""benchmarks/gpu_check.py keeps working: its tiny CPU form runs every check (the same code paths a GPU run takes,
on tiny models) and passes; a broken check makes it fail."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


def test_the_tiny_cpu_device_check_passes(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--tiny"], capture_output=True, text=True,
                       timeout=600, cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    out = r.stdout
    assert "all checks passed" in out and "| what | time | peak GPU memory | note |" in out
    for row in ("prompt step cls", "prompt step seg", "bfloat16", "vs float32: gradient cosine", "CAM inference",
                "SAMS seed", "quasi-superpixels", "stock SamAutomaticMaskGenerator", "stage II deeplabv3plus",
                "stage II mask2former", "one-rank gloo process group", "demo pipeline", "seed mIoU fine 83.3", "training-free CLIP-ES",
                "transformers SAM vs segment_anything SAM", "mask source sam2", "mask source edgetam"):
        assert row in out, row


def test_a_failing_check_fails_the_script(tmp_path: Path) -> None:
    # a process group that cannot start: the check is reported as failed and the script exits 1
    code = ("import runpy, sys; sys.argv = ['gpu_check', '--device', 'cpu', '--tiny', '--only', 'nccl'];"
            "import tag2mask.stages.common;"
            "import torch.distributed as dist; dist.init_process_group = lambda *a, **k: (_ for _ in ()).throw("
            "RuntimeError('no process group here'));"
            f"runpy.run_path({str(SCRIPT)!r}, run_name='__main__')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 1 and "1 check(s) failed" in r.stdout and "no process group here" in r.stdout
