"""One stage's bookkeeping in a run folder, the same for a stage command (``tag2mask cams ...``) and for
``tag2mask run``: begin (rank 0 prepares the folder while the others wait), work, count again once every rank has
finished its share, then mark the stage done in ``manifest.json`` when nothing is missing.

A per-image stage always does its work, which looks image by image for what changed (:mod:`tag2mask.stages.inputs`)
and computes only that; it reports "skipped" when it was done before under the same key and computed nothing. A
whole-split stage (prompt training) done under the same key (which covers its data) is skipped without work.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tag2mask.stages.common import barrier
from tag2mask.stages.rundir import ItemsResult, RunDir

Work = Callable[[Path | None, bool], tuple[dict[str, int], bool]]
"""``work(folder, quiet) -> (counts, complete)``: do (or finish) this worker's share of the stage in ``folder``
(None without a run folder) and say whether the whole stage is complete; ``quiet`` (the count after every rank's
share is done) hides progress bars. ``counts`` has ``"computed"`` for a per-image stage."""


@dataclass
class StageOutcome:
    """What one call of :func:`run_stage` did: the counts for the manifest, whether the stage is complete, the
    seconds of work, and whether it was skipped (done earlier, nothing to do now)."""

    name: str
    counts: dict[str, int]
    complete: bool
    seconds: float
    skipped: bool = False

    def summary(self) -> str:
        """``"images 6, computed 0 (1.2 s)"``, or ``"done earlier, skipped"``."""
        if self.skipped:
            return "done earlier, skipped"
        return f"{', '.join(f'{k} {v}' for k, v in self.counts.items())} ({self.seconds:.1f} s)"


def item_counts(result: ItemsResult) -> tuple[dict[str, int], bool]:
    """A per-image stage's :data:`Work` answer: ``({"images": total, "computed": computed}, complete)``."""
    return {"images": result.total, "computed": result.computed}, result.complete


def run_stage(
    run: RunDir | None,
    name: str,
    key: str,
    inputs: dict[str, Any],
    work: Work,
    *,
    rank: int = 0,
    world: int = 1,
    per_image: bool = True,
    collective: bool = True,
) -> StageOutcome:
    """Run stage ``name`` under ``key`` (its config hash) in ``run`` and keep its books.

    Args:
        run: the run folder, or None for a stage command without one (then nothing is recorded).
        inputs: what the manifest records as the stage's inputs (split, folders, weights).
        work: see :data:`Work`.
        rank, world: this process's rank and the number of processes sharing the stage.
        per_image: a per-image stage (always asked, image by image) rather than a whole-split one (prompt
            training: skipped when done under the same key).
        collective: the processes form a process group (torchrun): they wait for each other before and after the
            work, and count again once every share is done. False for independent ``--shard i/n`` workers.
    """
    lead = rank == 0
    done_before = run is not None and run.is_done(name, key)
    if done_before and not per_image:
        return StageOutcome(name, {}, True, 0.0, skipped=True)
    folder = None
    if run is not None:
        folder = run.begin_stage(name, key, inputs) if lead and not done_before else run.stage_dir(name)
    if collective:
        barrier()
    t0 = time.perf_counter()
    counts, complete = work(folder, False)
    if collective:
        barrier()
        if world > 1 and per_image:  # every rank's share is done now: count again (nothing left to compute)
            complete = work(folder, True)[1]
    seconds = time.perf_counter() - t0
    if done_before and complete and counts.get("computed") == 0:
        return StageOutcome(name, counts, True, 0.0, skipped=True)
    if run is not None and lead and complete:
        run.end_stage(name, counts, seconds)
    return StageOutcome(name, counts, complete, seconds)


def begin_shared_stage(run: RunDir, stage: str, config_hash: str, inputs: dict[str, Any], rank: int) -> Path:
    """Rank 0 prepares the stage folder (clearing results of another config) while the other ranks wait."""
    if rank == 0:
        run.begin_stage(stage, config_hash, inputs)
    barrier()
    return run.stage_dir(stage)


def end_shared_stage(run: RunDir, stage: str, counts: dict[str, int], seconds: float, complete: bool, rank: int) -> None:
    """After every rank has finished its share, rank 0 marks the stage done when nothing is missing."""
    barrier()
    if rank == 0 and complete:
        run.end_stage(stage, counts, seconds)
