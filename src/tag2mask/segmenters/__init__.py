"""Stage II: off-the-shelf segmentation networks trained on the seeds (SPEC §11, App. C, G).

* :mod:`~tag2mask.segmenters.base` — the :class:`Segmenter` interface every wrapper implements;
* :mod:`~tag2mask.segmenters.deeplab` — DeepLabV3+ from segmentation-models-pytorch;
* :mod:`~tag2mask.segmenters.mask2former` — Mask2Former from Hugging Face transformers;
* :mod:`~tag2mask.segmenters.recipes` — the App. G / MMSegmentation training recipes as typed settings;
* :mod:`~tag2mask.segmenters.augment` — the MMSegmentation training pipeline (resize, crop, flip, photometric);
* :mod:`~tag2mask.segmenters.loop` — the training loop (AMP, DDP, checkpoints, resume);
* :mod:`~tag2mask.segmenters.inference` — probabilities at image size, optional flip and multi-scale;
* :mod:`~tag2mask.segmenters.predictions` — the prediction file that ``predict`` writes and ``refine`` reads.

The networks come from the optional extra ``stage2`` (``pip install -e ".[stage2]"``); nothing here imports them
until a network is built.
"""
