"""Images sorted into one folder per class (torchvision's `ImageFolder` layout), one such tree per split:

    <root>/train/<class>/<any name>.<jpg|png|...>
    <root>/val/<class>/...
    <root>/test/<class>/...   (only if `cmvl eval dataset.split=test` is used)

The class names are the train folder's subfolders in sorted order (torchvision's `find_classes`); the image files
are those torchvision's `make_dataset` finds with its `IMG_EXTENSIONS`, in its order. The one table is `classes`."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import pyarrow as pa
from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, has_file_allowed_extension, make_dataset

from cmvl.data.sources.base import Source
from cmvl.data.sources.classes import classes_table
from cmvl.errors import DataError


class ImageFolderSource(Source):
    """Single-label classification data from class folders (see the module docstring)."""

    name = "image_folder"
    kinds = frozenset({"classes"})

    def __init__(self, *, root: str, split: str = "val") -> None:
        super().__init__(split=split)
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise DataError(f"dataset.root: folder not found: {self.root}")
        self._classes: list[str] | None = None

    @property
    def image_root(self) -> Path:
        return self.root

    def classes(self) -> list[str]:
        """The class names: the sorted subfolders of <root>/train."""
        if self._classes is None:
            train = self._split_dir("train")
            try:
                self._classes = find_classes(train)[0]
            except FileNotFoundError:
                raise DataError(f"{train}: no class folders (expected {train}/<class>/<image files>)") from None
        return self._classes

    def _split_dir(self, split: str) -> Path:
        folder = self.root / split
        if not folder.is_dir():
            raise DataError(
                f"dataset.root: no '{split}' folder in {self.root} (image_folder reads {self.root}/{split}/<class>/...)"
            )
        return folder

    def _read(self, kind: str, split: str) -> pa.Table:
        classes = self.classes()
        folder = self._split_dir(split)
        split_classes = find_classes(folder)[0] if any(e.is_dir() for e in os.scandir(folder)) else []
        unknown = sorted(set(split_classes) - set(classes))
        if unknown:
            raise DataError(
                f"{folder}: class folder '{unknown[0]}' is not a class of {self.root / 'train'} "
                f"({len(unknown)} such); a class the model never trained on cannot be scored"
            )
        not_images: list[str] = []

        def is_image(path: str) -> bool:
            if has_file_allowed_extension(path, IMG_EXTENSIONS):
                return True
            if not os.path.basename(path).startswith("."):  # hidden files (.DS_Store) are not data
                not_images.append(path)
            return False

        index = {name: i for i, name in enumerate(classes)}
        samples = make_dataset(folder, {c: index[c] for c in split_classes}, is_valid_file=is_image, allow_empty=True)
        if not_images:
            first = Path(not_images[0]).relative_to(self.root)
            raise DataError(
                f"{self.root}: '{first}' is not an image file ({len(not_images)} such in {split}/); image_folder "
                f"reads {', '.join(IMG_EXTENSIONS)}"
            )
        counts = Counter(label for _, label in samples)
        empty = [c for c in split_classes if counts[index[c]] == 0]
        if empty:
            raise DataError(f"{folder / empty[0]}: class folder without image files ({len(empty)} such in {split}/)")
        images = [Path(path).relative_to(self.root).as_posix() for path, _ in samples]
        return classes_table(list(range(1, len(samples) + 1)), images, [label for _, label in samples], classes)
