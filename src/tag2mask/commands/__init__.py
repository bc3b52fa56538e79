"""What each ``tag2mask`` command does with its parsed arguments: which config and run folder it uses, which
stage it calls, and the lines it prints. Parsing, dispatch and the exit codes of failures are :mod:`tag2mask.cli`'s;
the work and its books are the stages' (:mod:`tag2mask.stages`).

- :mod:`.method` — the method's stages one by one (superpixels, train, cams, seeds, evaluate) and ``run``;
- :mod:`.stage_two` — the segmentation network trained on the seeds (train-seg, predict, refine);
- :mod:`.tools` — segment, report, config, info, demo;
- :mod:`.common` — what several commands share (the config and run of a command, locking, ranks).

Heavy libraries are imported inside the functions that need them, so ``tag2mask --help`` answers at once.
"""
