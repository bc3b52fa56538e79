"""Small pure figure helpers for the run report: numpy arrays in, ``H×W×3`` uint8 RGB arrays out.

No plotting library: colours come from the VOC palette (:func:`tag2mask.io.voc_palette`) and a small
built-in heat colour map (:data:`HEAT_ANCHORS`). Resizing is done here too (nearest for label maps and masks,
bilinear with ``align_corners=False`` for score maps), so the report needs neither torch nor matplotlib.
:func:`png_data_uri` turns an RGB array into a ``data:image/png;base64,…`` URI for a self-contained HTML page.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence

import numpy as np
from PIL import Image

from tag2mask.io import voc_palette

#: The heat colour map: (position in [0, 1], R, G, B) anchors, linearly interpolated (a "jet"-like ramp from
#: dark blue through cyan, yellow and red to dark red).
HEAT_ANCHORS: tuple[tuple[float, int, int, int], ...] = (
    (0.0, 0, 0, 128),
    (0.125, 0, 0, 255),
    (0.375, 0, 255, 255),
    (0.625, 255, 255, 0),
    (0.875, 255, 0, 0),
    (1.0, 128, 0, 0),
)
#: Colour of pixels without a value (NaN) in :func:`heatmap`.
NO_VALUE_RGB: tuple[int, int, int] = (64, 64, 64)
#: Outline colour per quasi-superpixel level: 0 subpart (cyan), 1 part (yellow), 2 whole (red).
LEVEL_RGB: tuple[tuple[int, int, int], ...] = ((0, 255, 255), (255, 255, 0), (255, 0, 0))

_PALETTE = voc_palette()


def as_rgb(image: np.ndarray) -> np.ndarray:
    """``image`` as an ``H×W×3`` uint8 array (grey ``H×W`` is repeated, an alpha channel is dropped)."""
    a = np.asarray(image)
    if a.ndim == 2:
        a = np.repeat(a[:, :, None], 3, axis=2)
    if a.ndim != 3 or a.shape[2] not in (3, 4):
        raise ValueError(f"expected an H×W×3 image, got shape {a.shape}")
    a = a[:, :, :3]
    if a.dtype != np.uint8:
        a = np.clip(np.rint(a), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(a)


def colorize_labels(label: np.ndarray, palette: np.ndarray | None = None) -> np.ndarray:
    """An ``H×W`` label map (0 bg, ``c+1`` class ``c``, 255 ignore) in VOC palette colours: ``H×W×3`` uint8."""
    pal = _PALETTE if palette is None else np.asarray(palette, np.uint8)
    return pal[np.asarray(label).astype(np.intp)]


def blend(image: np.ndarray, colour: np.ndarray, alpha: float, where: np.ndarray | None = None) -> np.ndarray:
    """``(1 − alpha)·image + alpha·colour`` (rounded to nearest), only on ``where`` (``H×W`` bool) when given."""
    img = as_rgb(image)
    col = np.broadcast_to(np.asarray(colour, np.float64), img.shape)
    mixed = np.clip(np.rint((1.0 - alpha) * img.astype(np.float64) + alpha * col), 0, 255).astype(np.uint8)
    if where is None:
        return mixed
    return np.where(np.asarray(where, bool)[:, :, None], mixed, img)


#: Colour of the line drawn just outside every labelled region by :func:`overlay` (with the region's own solid
#: colour inside it, one of the two stands out on any image).
HALO_RGB: tuple[int, int, int] = (0, 0, 0)


def label_edges(label: np.ndarray) -> np.ndarray:
    """``H×W`` bool: the pixels with a 4-neighbour of another label id (both sides of every boundary)."""
    lab = np.asarray(label)
    edge = np.zeros(lab.shape, bool)
    diff_v = lab[1:, :] != lab[:-1, :]
    diff_h = lab[:, 1:] != lab[:, :-1]
    edge[1:, :] |= diff_v
    edge[:-1, :] |= diff_v
    edge[:, 1:] |= diff_h
    edge[:, :-1] |= diff_h
    return edge


def overlay(image: np.ndarray, label: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """The label map over the image, visible on any image: every labelled pixel (ignore 255 included) mixed
    with its palette colour at ``alpha`` (a translucent fill), each region's boundary in its solid colour, and
    a :data:`HALO_RGB` line on the background pixels just outside it. Background (0) elsewhere keeps the image."""
    label = np.asarray(label)
    if label.shape != np.asarray(image).shape[:2]:
        raise ValueError(f"label {label.shape} and image {np.asarray(image).shape[:2]} differ in size")
    colours = colorize_labels(label)
    labelled = label != 0
    out = blend(image, colours, alpha, where=labelled)
    edges = label_edges(label)
    inside = edges & labelled
    out[inside] = colours[inside]
    out[edges & ~labelled] = HALO_RGB
    return out


def heat_css_gradient() -> str:
    """The heat colour map (:data:`HEAT_ANCHORS`) as a CSS ``linear-gradient`` from 0 (left) to 1 (right)."""
    stops = ", ".join(f"rgb({r},{g},{b}) {100 * pos:g}%" for pos, r, g, b in HEAT_ANCHORS)
    return f"linear-gradient(to right, {stops})"


def heatmap(values: np.ndarray) -> np.ndarray:
    """An ``H×W`` map of values in [0, 1] (clipped; NaN = no value) in the heat colours: ``H×W×3`` uint8."""
    v = np.asarray(values, np.float64)
    missing = ~np.isfinite(v)
    v = np.clip(np.where(missing, 0.0, v), 0.0, 1.0)
    pos = [a[0] for a in HEAT_ANCHORS]
    out = np.empty((*v.shape, 3), np.uint8)
    for ch in range(3):
        out[..., ch] = np.rint(np.interp(v, pos, [a[ch + 1] for a in HEAT_ANCHORS])).astype(np.uint8)
    out[missing] = NO_VALUE_RGB
    return out


def minmax01(cam: np.ndarray) -> np.ndarray:
    """SPEC §3 normalisation of one map for display: :func:`tag2mask.maps.mmnorm` over the whole map (float64)."""
    import torch

    from tag2mask.maps import mmnorm

    v = torch.from_numpy(np.array(cam, np.float64, copy=True))
    return v.numpy() if v.numel() == 0 else mmnorm(v, dim=tuple(range(v.ndim))).numpy()


# -- resizing ------------------------------------------------------------------------------------------------------


def display_size(size: tuple[int, int], max_width: int = 256) -> tuple[int, int]:
    """``(h, w)`` of ``size`` scaled down (never up) so that the width is at most ``max_width``."""
    h, w = int(size[0]), int(size[1])
    if w <= max_width:
        return h, w
    return max(1, round(h * max_width / w)), max_width


def _nearest_index(n_in: int, n_out: int) -> np.ndarray:
    return np.minimum(((np.arange(n_out) + 0.5) * n_in / n_out).astype(np.intp), n_in - 1)


def resize_nearest(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of the last two axes (``…×H×W``) of a label map or mask stack to ``size``."""
    a = np.asarray(array)
    h, w = a.shape[-2:]
    if (h, w) == tuple(size):
        return a
    rows, cols = _nearest_index(h, size[0]), _nearest_index(w, size[1])
    return a[..., rows[:, None], cols[None, :]]


def _bilinear_weights(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    src = np.maximum((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0.0)
    i0 = np.minimum(np.floor(src).astype(np.intp), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    return i0, i1, src - i0


def resize_bilinear(values: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of an ``H×W`` (or ``…×H×W``) float map to ``size`` (``align_corners=False``, as torch's
    ``F.interpolate``); float64 out."""
    v = np.asarray(values, np.float64)
    h, w = v.shape[-2:]
    if (h, w) == tuple(size):
        return v.copy()
    r0, r1, ry = _bilinear_weights(h, size[0])
    c0, c1, cx = _bilinear_weights(w, size[1])
    top = v[..., r0, :] * (1 - ry)[:, None] + v[..., r1, :] * ry[:, None]
    return top[..., c0] * (1 - cx) + top[..., c1] * cx


def resize_rgb(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize an RGB image to ``size`` = (h, w) with PIL's bilinear filter (antialiased when shrinking)."""
    img = as_rgb(image)
    if img.shape[:2] == tuple(size):
        return img
    return np.asarray(Image.fromarray(img).resize((size[1], size[0]), Image.BILINEAR))


# -- superpixels ---------------------------------------------------------------------------------------------------


def mask_boundaries(mask: np.ndarray) -> np.ndarray:
    """The inner boundary of an ``H×W`` bool mask: its pixels with a 4-neighbour outside it (or at the border)."""
    m = np.asarray(mask, bool)
    inner = m.copy()
    inner[1:, :] &= m[:-1, :]
    inner[:-1, :] &= m[1:, :]
    inner[:, 1:] &= m[:, :-1]
    inner[:, :-1] &= m[:, 1:]
    inner[0, :] = inner[-1, :] = False
    inner[:, 0] = inner[:, -1] = False
    return m & ~inner


def mask_outlines(
    masks: np.ndarray,
    levels: Sequence[int] | np.ndarray | None = None,
    background: np.ndarray | None = None,
    colours: Sequence[tuple[int, int, int]] = LEVEL_RGB,
) -> np.ndarray:
    """The outlines of an ``S×H×W`` mask stack, coloured by level (:data:`LEVEL_RGB`; all level 2 when
    ``levels`` is None), drawn over ``background`` (an RGB image of the same size; black when None).

    Lower levels are drawn first, so the outline of a whole covers that of its parts where they coincide.
    """
    m = np.asarray(masks, bool)
    s, h, w = m.shape
    out = np.zeros((h, w, 3), np.uint8) if background is None else as_rgb(background).copy()
    lv = np.full(s, 2, np.int64) if levels is None else np.asarray(levels, np.int64).reshape(-1)
    for k in np.argsort(lv, kind="stable"):
        out[mask_boundaries(m[k])] = colours[int(np.clip(lv[k], 0, len(colours) - 1))]
    return out


def paint_superpixels(
    masks: np.ndarray, values: Sequence[float] | np.ndarray, order: Sequence[int] | np.ndarray | None = None
) -> np.ndarray:
    """An ``H×W`` float map where every superpixel is filled with its value, painted in ``order`` (mask indices,
    first painted first, last writer wins; index order when None); pixels in no mask are NaN."""
    m = np.asarray(masks, bool)
    vals = np.asarray(values, np.float64).reshape(-1)
    out = np.full(m.shape[1:], np.nan)
    for k in range(m.shape[0]) if order is None else np.asarray(order, np.intp).reshape(-1):
        out[m[k]] = vals[k]
    return out


def superpixel_means(values: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """The mean of an ``H×W`` map inside each of ``S×H×W`` masks (NaN for an empty mask): ``S`` float64."""
    m = np.asarray(masks, bool).reshape(np.asarray(masks).shape[0], -1)
    v = np.asarray(values, np.float64).reshape(-1)
    area = m.sum(axis=1)
    sums = m.astype(np.float64) @ v
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(area > 0, sums / np.maximum(area, 1), np.nan)


# -- composition and encoding ----------------------------------------------------------------------------------------


def tile(images: Sequence[np.ndarray], gap: int = 2, fill: tuple[int, int, int] = (255, 255, 255)) -> np.ndarray:
    """RGB images side by side (top-aligned, ``gap`` pixels of ``fill`` between them): one ``H×W×3`` uint8."""
    rgbs = [as_rgb(i) for i in images]
    if not rgbs:
        return np.zeros((0, 0, 3), np.uint8)
    h = max(i.shape[0] for i in rgbs)
    w = sum(i.shape[1] for i in rgbs) + gap * (len(rgbs) - 1)
    out = np.empty((h, w, 3), np.uint8)
    out[:] = fill
    x = 0
    for i in rgbs:
        out[: i.shape[0], x : x + i.shape[1]] = i
        x += i.shape[1] + gap
    return out


def png_bytes(rgb: np.ndarray, max_colours: int | None = None) -> bytes:
    """An RGB (or grey) array encoded as PNG.

    With ``max_colours``, an image with more distinct colours than that is first reduced to ``max_colours``
    colours (PIL's fast octree quantizer; lossy, about 3× smaller for photographs). Images with at most
    ``max_colours`` colours (label maps, outlines on flat colours) and ``max_colours=None`` are stored exactly.
    """
    img = Image.fromarray(as_rgb(rgb))
    if max_colours is not None and img.getcolors(max_colours) is None:
        img = img.quantize(max_colours, method=Image.Quantize.FASTOCTREE)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def png_data_uri(rgb: np.ndarray, max_colours: int | None = None) -> str:
    """An RGB array as a ``data:image/png;base64,…`` URI (for ``<img src>`` in a self-contained page);
    ``max_colours`` as in :func:`png_bytes` (None: lossless)."""
    return "data:image/png;base64," + base64.b64encode(png_bytes(rgb, max_colours)).decode("ascii")
