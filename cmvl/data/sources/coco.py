"""COCO from its official files: captions and instances JSON per subtype, or the Karpathy split file, as
`captions` and `objects` tables."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cmvl.data.jsonfile import load_json, optional, records, require_unique, required
from cmvl.data.sources.base import OBJECTS_SCHEMA, FolderSource
from cmvl.data.table_cache import cached_table
from cmvl.errors import ConfigError, DataError

READER_VERSION = 3  # bump when the tables built here change, so cached tables are rebuilt
SPLIT_SCHEMES = ("official", "karpathy")
DEFAULT_SUBTYPES = {"train": "train2017", "val": "val2017"}

CAPTIONS_SCHEMA = pa.schema(
    [
        ("image_id", pa.int64()),
        ("image", pa.string()),  # image file, relative to the image root
        ("caption_id", pa.int64()),
        ("caption", pa.string()),  # the raw caption as annotated
    ]
)


IMAGE = pa.struct([required("id", pa.int64()), required("file_name", pa.string())])
SIZED_IMAGE = pa.struct([*IMAGE, required("width", pa.int32()), required("height", pa.int32())])
CAPTION = pa.struct([required("image_id", pa.int64()), required("id", pa.int64()), required("caption", pa.string())])
CAPTIONS_FILE = pa.struct([required("images", pa.list_(IMAGE)), required("annotations", pa.list_(CAPTION))])
OBJECT = pa.struct(
    [
        required("image_id", pa.int64()),
        required("category_id", pa.int64()),
        required("bbox", pa.list_(pa.float64(), 4)),
        optional("iscrowd", pa.int64()),
        optional("area", pa.float64()),
        optional("attributes", pa.list_(pa.string())),  # not COCO's: the shapes world's [colour, size]
    ]
)
CATEGORY = pa.struct([required("id", pa.int64()), required("name", pa.string())])
INSTANCES_FILE = pa.struct(
    [
        required("images", pa.list_(SIZED_IMAGE)),
        required("annotations", pa.list_(OBJECT)),
        required("categories", pa.list_(CATEGORY)),
    ]
)
KARPATHY_IMAGE = pa.struct(
    [
        required("filepath", pa.string()),
        required("filename", pa.string()),
        required("cocoid", pa.int64()),
        required("split", pa.string()),
        required("sentences", pa.list_(pa.struct([required("raw", pa.string()), optional("sentid", pa.int64())]))),
    ]
)
KARPATHY_FILE = pa.struct([required("images", pa.list_(KARPATHY_IMAGE))])


def _image_files(images: list[dict], *, path: Path, image_folder: str) -> dict[int, str]:
    """Image id → file under the image root; ids must be unique (annotations are joined to images by id)."""
    require_unique(np.array([im["id"] for im in images], dtype=np.int64), path=path, key="image id")
    return {im["id"]: f"{image_folder}/{im['file_name']}" for im in images}


def read_coco_captions(captions_file: Path, *, image_folder: str) -> pa.Table:
    """One row per caption; `image_folder` is the image subfolder of this subtype (e.g. ``val2017``)."""
    doc = load_json(captions_file, what="COCO captions file", layout=CAPTIONS_FILE)
    files = _image_files(doc["images"], path=captions_file, image_folder=image_folder)
    captions = records(doc["annotations"], CAPTION)
    image_ids = captions.field("image_id")
    unknown = [i for i, image_id in enumerate(image_ids.to_pylist()) if image_id not in files]
    if unknown:
        raise DataError(
            f"{captions_file}: caption {captions.field('id')[unknown[0]]} names image {image_ids[unknown[0]]}, which "
            f"is not in images ({len(unknown)} captions do)"
        )
    columns = {
        "image_id": image_ids,
        "image": pa.array([files[i] for i in image_ids.to_pylist()], type=pa.string()),
        "caption_id": captions.field("id"),
        "caption": pc.utf8_trim_whitespace(captions.field("caption")),
    }
    return pa.table(columns, schema=CAPTIONS_SCHEMA)


def read_coco_instances(instances_files: list[tuple[Path, str]], *, keep: set[int] | None = None) -> pa.Table:
    """One row per image (also images without objects) from one or more (instances file, image folder) pairs.

    Labels index the sorted COCO category ids (80 for COCO, so label 0 is `person`); the category names go into the
    schema metadata as `categories` (JSON list), their COCO ids as `category_ids`. Every file must share the same
    categories. Crowd annotations stay in the table (`iscrowd`): training leaves them out, COCO's evaluation ignores
    what matches them.
    """
    categories: list[dict] | None = None
    columns: dict[str, list] = {name: [] for name in OBJECTS_SCHEMA.names}
    for path, image_folder in instances_files:
        doc = load_json(path, what="COCO instances file", layout=INSTANCES_FILE)
        file_categories = sorted(doc["categories"], key=lambda c: c["id"])
        require_unique(np.array([c["id"] for c in file_categories], dtype=np.int64), path=path, key="category id")
        if categories is None:
            categories = file_categories
        elif [c["id"] for c in categories] != [c["id"] for c in file_categories]:
            raise DataError(f"{path}: its categories differ from those of {instances_files[0][0]}")
        label = {c["id"]: i for i, c in enumerate(categories)}
        _image_files(doc["images"], path=path, image_folder=image_folder)
        per_image: dict[int, list[dict]] = {}
        for row, ann in enumerate(doc["annotations"]):
            if ann["category_id"] not in label:
                raise DataError(f"{path}: annotations[{row}].category_id {ann['category_id']} is not in categories")
            per_image.setdefault(ann["image_id"], []).append(ann)
        for im in sorted(doc["images"], key=lambda im: im["id"]):
            image_id = im["id"]
            if keep is not None and image_id not in keep:
                continue
            objects = per_image.get(image_id, [])
            columns["image_id"].append(image_id)
            columns["image"].append(f"{image_folder}/{im['file_name']}")
            columns["width"].append(im["width"])
            columns["height"].append(im["height"])
            columns["labels"].append([label[a["category_id"]] for a in objects])
            columns["boxes"].append([[float(v) for v in a["bbox"]] for a in objects])
            columns["iscrowd"].append([bool(a.get("iscrowd", 0)) for a in objects])
            columns["area"].append([_object_area(a) for a in objects])
            columns["phrases"].append([_object_phrase(a, categories[label[a["category_id"]]]["name"]) for a in objects])
    names = [c["name"] for c in categories or []]
    ids = [c["id"] for c in categories or []]
    metadata = {"categories": json.dumps(names), "category_ids": json.dumps(ids)}
    return pa.table(columns, schema=OBJECTS_SCHEMA.with_metadata(metadata))


def _object_area(annotation: dict) -> float:
    """The annotation's `area` (COCO: of its segment, what COCO's evaluation ranks by), else its box's."""
    area = annotation.get("area")
    return float(area) if area is not None else float(annotation["bbox"][2] * annotation["bbox"][3])


def _object_phrase(annotation: dict, category: str) -> str:
    """ "<first attribute> <category>" where the annotation lists attributes (the shapes world's colour), else the
    category name."""
    attributes = [a.strip() for a in annotation.get("attributes") or [] if a and a.strip()]
    return f"{attributes[0]} {category}" if attributes else category


def read_karpathy_captions(karpathy_file: Path, split_names: list[str]) -> pa.Table:
    """Captions of the Karpathy split file's images whose `split` is in `split_names` (`raw` sentences)."""
    doc = load_json(karpathy_file, what="Karpathy split file", layout=KARPATHY_FILE)
    columns: dict[str, list] = {name: [] for name in CAPTIONS_SCHEMA.names}
    for im in doc["images"]:
        if im["split"] not in split_names:
            continue
        for sentence in im["sentences"]:
            sentence_id = sentence.get("sentid")
            columns["image_id"].append(im["cocoid"])
            columns["image"].append(f"{im['filepath']}/{im['filename']}")
            columns["caption_id"].append(-1 if sentence_id is None else sentence_id)
            columns["caption"].append(sentence["raw"].strip())
    return pa.table(columns, schema=CAPTIONS_SCHEMA)


class COCOSource(FolderSource):
    """COCO captions (`captions` table) and instances (`objects` table) from the official files, split by
    subtype (`official`) or by the Karpathy split file (`karpathy`: train / val / test of 5k images each for val
    and test; `restval` joins train unless `karpathy_restval: false`)."""

    name = "coco"
    kinds = frozenset({"captions", "objects"})

    def __init__(
        self,
        *,
        root: str,
        images: str | None = None,
        split: str = "val",
        subtypes: dict[str, str] | None = None,
        split_scheme: str = "official",
        karpathy_file: str | None = None,
        karpathy_restval: bool = True,
        missing_images: str = "skip",
    ) -> None:
        super().__init__(root=root, images=images, split=split, missing_images=missing_images)
        if split_scheme not in SPLIT_SCHEMES:
            raise ConfigError(f"dataset.split_scheme={split_scheme}: must be one of {', '.join(SPLIT_SCHEMES)}")
        self.subtypes = dict(subtypes or DEFAULT_SUBTYPES)
        self.split_scheme = split_scheme
        self.karpathy_file = Path(karpathy_file) if karpathy_file else self.root / "dataset_coco.json"
        self.karpathy_restval = karpathy_restval
        self.splits = self.splits_for({"split_scheme": split_scheme, "subtypes": self.subtypes})

    @classmethod
    def splits_for(cls, args: Mapping[str, Any]) -> tuple[str, ...]:
        if args.get("split_scheme") == "karpathy":
            return ("train", "val", "test")
        return tuple(args.get("subtypes") or DEFAULT_SUBTYPES)

    def _karpathy_names(self, split: str) -> list[str]:
        return ["train", "restval"] if split == "train" and self.karpathy_restval else [split]

    def _read(self, kind: str, split: str) -> pa.Table:
        if self.split_scheme == "karpathy":
            table = self._read_karpathy(kind, split)
        else:
            subtype = self.subtypes[split]
            path = self.root / "annotations" / f"{kind.replace('objects', 'instances')}_{subtype}.json"
            if kind == "captions":
                build = lambda: read_coco_captions(path, image_folder=subtype)  # noqa: E731
            else:
                build = lambda: read_coco_instances([(path, subtype)])  # noqa: E731
            table = cached_table(f"coco_{kind}", [path], {"folder": subtype, "version": READER_VERSION}, build)
        return self.with_images_present(table, f"{kind} {split}")

    def _read_karpathy(self, kind: str, split: str) -> pa.Table:
        names = self._karpathy_names(split)
        if kind == "captions":
            params = {"splits": names, "version": READER_VERSION}
            return cached_table(
                "coco_karpathy_captions",
                [self.karpathy_file],
                params,
                lambda: read_karpathy_captions(self.karpathy_file, names),
            )
        # Karpathy images come from train2014 and val2014: read the instances of every subtype that has a file
        pairs = [(self.root / "annotations" / f"instances_{sub}.json", sub) for sub in self.subtypes.values()]
        pairs = [(path, sub) for path, sub in pairs if path.is_file()]
        if not pairs:
            raise DataError(
                f"no COCO instances file under {self.root / 'annotations'} for {list(self.subtypes.values())}"
            )

        def build() -> pa.Table:
            ids = read_karpathy_captions(self.karpathy_file, names).column("image_id").to_numpy()
            return read_coco_instances(pairs, keep=set(np.unique(ids).tolist()))

        params = {"splits": names, "subtypes": [s for _, s in pairs], "version": READER_VERSION}
        return cached_table("coco_karpathy_objects", [self.karpathy_file, *(p for p, _ in pairs)], params, build)
