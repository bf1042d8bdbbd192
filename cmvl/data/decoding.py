"""Decoding an image file or stream to the 8-bit RGB image every model reads, with Pillow and NumPy only (no torch:
`cmvl serve backend=onnx` decodes with it too): upright by EXIF orientation, transparency over white, 16-bit grey
scaled, 32-bit and decompression bombs refused as unreadable."""

from __future__ import annotations

import struct
import warnings
from pathlib import Path
from typing import IO

import numpy as np
from PIL import Image, ImageOps

from cmvl.errors import DataError

# What Pillow raises for bytes it cannot decode: broken headers and truncated data (OSError, incl.
# UnidentifiedImageError), malformed chunks and EXIF blocks (ValueError, SyntaxError, EOFError, IndexError,
# struct.error), and images too large to be honest (a decompression bomb: DecompressionBombError, and
# DecompressionBombWarning, which `decode_image` turns into an error). Each makes the image unreadable.
DECODE_ERRORS = (
    OSError,
    ValueError,
    SyntaxError,
    EOFError,
    IndexError,
    struct.error,
    Image.DecompressionBombError,
    Image.DecompressionBombWarning,
)
SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N"})  # 0–65535 grey, e.g. 16-bit PNG and TIFF
ALPHA_MODES = frozenset({"LA", "PA", "RGBA", "RGBa"})
# 32-bit integer and float pixels have no defined 0–255 range (HDR, depth maps, scientific data): any choice of
# range would be a guess, so they are refused rather than decoded wrong.
UNRANGED_MODES = {"I": "32-bit integer", "F": "32-bit float"}


def decode_image(source: str | Path | IO[bytes], *, name: str) -> Image.Image:
    """The 8-bit RGB image that `source` (a file or an open binary stream) holds, upright (EXIF orientation), with
    transparency composited over white. The one judge of "unreadable": whatever cannot be decoded right raises
    `DataError("unreadable image: <name> (<reason>)")`, which training may skip and evaluation refuses."""
    try:
        with warnings.catch_warnings():  # loaders are processes, so the process-wide filter change is safe here
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as im:
                im.load()
                return to_rgb(ImageOps.exif_transpose(im))
    except FileNotFoundError:
        raise DataError(f"image not found: {name}") from None
    except DECODE_ERRORS as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise DataError(f"unreadable image: {name} ({reason})") from None


def to_rgb(im: Image.Image) -> Image.Image:
    """8-bit RGB from any mode Pillow decodes (`convert("RGB")` alone clips 16-bit grey to white and drops alpha
    onto black); a ValueError for modes without a defined 0–255 range."""
    if im.mode in UNRANGED_MODES:
        raise ValueError(
            f"mode {im.mode}: {UNRANGED_MODES[im.mode]} pixels have no defined 0-255 range; save it as "
            "8 or 16 bits per channel"
        )
    if im.mode in SIXTEEN_BIT_MODES:
        grey = np.asarray(im).astype(np.uint32)  # the array has the mode's byte order, whatever the machine's
        return Image.fromarray(((grey + 128) // 257).astype(np.uint8), mode="L").convert("RGB")  # 65535 → 255
    if im.mode in ALPHA_MODES or "transparency" in im.info:
        rgba = im.convert("RGBA")  # also applies a palette's or a colour key's transparency
        return Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba).convert("RGB")
    return im.convert("RGB")
