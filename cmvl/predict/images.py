"""A user's image as a restored run's model reads it: decoded as the run's training and evaluation images are (EXIF
orientation, alpha over white, 16-bit grey: `cmvl.data.images.decode_image`)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image, ImageOps

from cmvl.data.images import DECODE_ERRORS, decode_image, to_rgb
from cmvl.errors import DataError

if TYPE_CHECKING:
    from cmvl.predict import RestoredRun

ImageInput = str | Path | Image.Image  # a file, or an image already in memory


def image_size(run: RestoredRun) -> int:
    """The side of the square images the run's model reads (its evaluation resize)."""
    return int(run.config.data.image.size)


def open_input_image(image: ImageInput) -> Image.Image:
    """The upright 8-bit RGB image of a file path or an in-memory PIL image (decoded exactly as training data is:
    `cmvl.data.images.decode_image`); `DataError` (one line naming it) for a missing or unreadable one."""
    if isinstance(image, Image.Image):
        try:
            return to_rgb(ImageOps.exif_transpose(image))
        except DECODE_ERRORS as err:
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise DataError(f"unreadable image: in-memory {image.mode} image ({reason})") from None
    if isinstance(image, str | Path):
        path = Path(image).expanduser()
        if path.is_dir():
            raise DataError(f"image={path}: is a folder, not an image file")
        return decode_image(path, name=str(path))
    raise TypeError(f"an image is a file path or a PIL.Image.Image, not {type(image).__name__}")
