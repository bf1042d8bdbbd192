"""Image decoding and resizing. Batches carry uint8 pixels; normalisation happens on the model's device
(`VisionLanguageModel.encode`), which keeps workers cheap and host-to-device copies 4× smaller."""

from __future__ import annotations

from pathlib import Path

from PIL import Image
from torchvision.transforms import v2 as T

# The decoder lives in a module without torch (`cmvl serve backend=onnx` decodes as training does); its names stay
# importable from here.
from cmvl.data.decoding import DECODE_ERRORS, decode_image, to_rgb  # noqa: F401


def build_transform(*, image_size: int, train: bool, random_crop_scale: float | None = None) -> T.Compose:
    """PIL image → uint8 tensor 3×size×size. `random_crop_scale` (train only) enables RandomResizedCrop."""
    if train and random_crop_scale:
        resize = T.RandomResizedCrop(image_size, scale=(random_crop_scale, 1.0), antialias=True)
    else:
        resize = T.Resize((image_size, image_size), antialias=True)
    return T.Compose([T.PILToTensor(), resize])


def load_image(path: Path) -> Image.Image:
    """The RGB image of a file (see `decode_image`)."""
    return decode_image(path, name=str(path))
