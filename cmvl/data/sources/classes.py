"""The `classes` annotation table (single-label image classification) and the shapes world's version of it."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pyarrow as pa

from cmvl.data.jsonfile import load_json
from cmvl.errors import ConfigError
from cmvl.log import get_logger

log = get_logger(__name__)

# One row per image; `label` indexes the schema metadata `classes` (the class names, in label order).
CLASSES_SCHEMA = pa.schema(
    [
        ("image_id", pa.int64()),
        ("image", pa.string()),  # image file, relative to the image root
        ("label", pa.int32()),
    ]
)
CLASSES_KEY = "classes"  # schema metadata: JSON list of the class names


def classes_table(image_ids: list[int], images: list[str], labels: list[int], classes: list[str]) -> pa.Table:
    """A `classes` table whose schema metadata names the classes (`classes[label]`)."""
    schema = CLASSES_SCHEMA.with_metadata({CLASSES_KEY: json.dumps(list(classes))})
    columns = [
        pa.array(image_ids, type=pa.int64()),
        pa.array(images, type=pa.string()),
        pa.array(labels, type=pa.int32()),
    ]
    return pa.Table.from_arrays(columns, schema=schema)


# What a shapes image's class is: the most frequent shape, colour or colour+shape of its objects.
SHAPES_CLASS_LABELS = ("shape", "color", "color_shape")


def check_class_label(class_label: str) -> str:
    if class_label not in SHAPES_CLASS_LABELS:
        raise ConfigError(f"dataset.class_label={class_label}: choose one of {', '.join(SHAPES_CLASS_LABELS)}")
    return class_label


def majority(values: list[str]) -> str | None:
    """The value that occurs more often than any other, or None on a tie (the image has no single answer)."""
    top = Counter(values).most_common(2)
    return top[0][0] if len(top) == 1 or top[0][1] > top[1][1] else None


def read_shapes_classes(instances: Path, split: str, class_label: str, names: list[str]) -> pa.Table:
    """The `classes` table of one shapes split, read from its COCO instances file (whose objects carry their
    colour as the first attribute): each image's majority `class_label`, among `names` (every possible class,
    so that all splits share one label order). Images whose objects tie are left out, with one line saying how
    many: a single-label image has one right answer."""
    document = load_json(instances, what="shapes instances file")
    category = {c["id"]: c["name"] for c in document["categories"]}
    values: dict[int, list[str]] = {image["id"]: [] for image in document["images"]}
    files = {image["id"]: f"{split}/{image['file_name']}" for image in document["images"]}
    for obj in document["annotations"]:
        shape, color = category[obj["category_id"]], obj["attributes"][0]
        value = {"shape": shape, "color": color, "color_shape": f"{color} {shape}"}[class_label]
        values[obj["image_id"]].append(value)
    index = {name: i for i, name in enumerate(names)}
    chosen = {image_id: majority(v) for image_id, v in values.items() if v}
    kept = sorted(image_id for image_id, label in chosen.items() if label is not None)
    if len(kept) < len(values):
        log.info(
            f"shapes {split}: {len(values) - len(kept)} of {len(values)} images have no single most frequent "
            f"{class_label.replace('_', ' ')} and are not in the classes table"
        )
    return classes_table(kept, [files[i] for i in kept], [index[chosen[i]] for i in kept], names)
