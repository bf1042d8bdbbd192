"""The resize training applies (torchvision's `Resize(antialias=True)`, bilinear, on the uint8 tensor:
cmvl/data/images.py), in NumPy, for `cmvl serve backend=onnx`, which imports no torch: the same pixels, not Pillow's
bilinear filter, which differs from it by one grey level on some pixels (and so may flip a near-tie).

It follows torch's uint8 antialiased kernel (aten UpSampleKernel, itself derived from Pillow's resampling): per axis,
triangle-filter weights widened by the scale when shrinking, normalised, rounded to integers with the largest
precision that keeps every weight below 2**15; the horizontal pass first, rounded to uint8, then the vertical one;
an axis whose size does not change is not resampled. Checked pixel for pixel against torchvision by
tests/serve/test_resize.py.
"""

from __future__ import annotations

import numpy as np

MAX_PRECISION = 22  # torch's bound on the weights' fractional bits
WEIGHT_LIMIT = 1 << 15  # the integer weights fit in int16
COLUMNS_PER_BLOCK = 16  # output columns computed from one contiguous slice of the input


def resize_like_training(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """A uint8 H×W×C array stretched to `height` × `width` (uint8 C×height×width, the graph's layout)."""
    x = np.ascontiguousarray(image.transpose(2, 0, 1))
    if x.shape[2] != width:
        x = _resample_last_axis(x, width)
    if x.shape[1] != height:
        x = _resample_last_axis(np.ascontiguousarray(x.transpose(0, 2, 1)), height).transpose(0, 2, 1)
    return np.ascontiguousarray(x)


def _resample_last_axis(x: np.ndarray, size: int) -> np.ndarray:
    """x's last axis (uint8) resampled to `size`; the sums are taken in float64, where they are exact integers."""
    starts, weights, precision = axis_weights(x.shape[-1], size)
    out = np.empty((*x.shape[:-1], size))
    for first in range(0, size, COLUMNS_PER_BLOCK):
        block = slice(first, min(first + COLUMNS_PER_BLOCK, size))
        low = int(starts[block].min())
        high = max(int(s) + len(w) for s, w in zip(starts[block], weights[block]))
        matrix = np.zeros((high - low, block.stop - block.start))
        for column, (start, w) in enumerate(zip(starts[block], weights[block])):
            matrix[start - low : start - low + len(w), column] = w
        out[..., block] = x[..., low:high].astype(np.float64) @ matrix
    return np.clip(np.floor((out + (1 << (precision - 1))) / (1 << precision)), 0, 255).astype(np.uint8)


def axis_weights(size_in: int, size_out: int) -> tuple[np.ndarray, list[np.ndarray], int]:
    """Each output index's first input index and integer weights, and the weights' precision (fractional bits)."""
    scale = size_in / size_out
    support = scale if scale >= 1.0 else 1.0  # bilinear's support (1) widened by the scale when shrinking
    inverse = 1.0 / scale if scale >= 1.0 else 1.0
    starts, floats = [], []
    for i in range(size_out):
        center = scale * (i + 0.5)
        start = max(int(center - support + 0.5), 0)
        stop = min(int(center + support + 0.5), size_in)
        w = np.maximum(0.0, 1.0 - np.abs((np.arange(start, stop) - center + 0.5) * inverse))
        total = w.sum()
        starts.append(start)
        floats.append(w / total if total != 0.0 else w)
    largest = max(float(w.max(initial=0.0)) for w in floats)
    precision = 0
    while precision < MAX_PRECISION and int(0.5 + largest * (1 << (precision + 1))) < WEIGHT_LIMIT:
        precision += 1
    weights = [_round_half_away(w * (1 << precision)) for w in floats]
    return np.array(starts), weights, precision


def _round_half_away(v: np.ndarray) -> np.ndarray:
    return np.where(v < 0, np.trunc(v - 0.5), np.trunc(v + 0.5))
