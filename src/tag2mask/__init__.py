"""tag2mask: image-level tags in, pixel-accurate segmentation masks out (FMA-WSSS)."""

__version__ = "0.1.0"
