"""Datasets: VOC 2012 (+SBD trainaug), COCO 2014, your own folder + CSV, and the synthetic demo dataset.

Open any of them with :func:`open_dataset`; every reader returns a :class:`SegDataset` of :class:`Sample`.
"""

from __future__ import annotations

from tag2mask.data.base import KINDS, Sample, SegDataset, default_cache_dir, open_dataset
from tag2mask.data.coco import COCO_CLASSES, COCODataset
from tag2mask.data.folder import FolderDataset
from tag2mask.data.synthetic import SYNTHETIC_CLASSES, SyntheticDataset, make_synthetic_dataset
from tag2mask.data.voc import VOC_CLASSES, VOCDataset

__all__ = [
    "COCO_CLASSES",
    "KINDS",
    "SYNTHETIC_CLASSES",
    "VOC_CLASSES",
    "COCODataset",
    "FolderDataset",
    "Sample",
    "SegDataset",
    "SyntheticDataset",
    "VOCDataset",
    "default_cache_dir",
    "make_synthetic_dataset",
    "open_dataset",
]
