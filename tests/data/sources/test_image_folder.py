"""dataset=image_folder reads torchvision's ImageFolder layout per split (classes from train/, torchvision's image
extensions) into a `classes` table, and refuses an empty class folder, a non-image file and a class that only
val/ has in one line each; the shapes world's classes table is each image's majority shape, colour or both."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from cmvl.data.sources.classes import majority
from cmvl.data.sources.image_folder import ImageFolderSource
from cmvl.data.sources.shapes import ShapesSource
from cmvl.errors import ConfigError, DataError
from tests.conftest import TINY_SPEC, assert_one_line_error, cli_in_process

LAYOUT = {"train": {"cat": 3, "dog": 2}, "val": {"cat": 1, "dog": 1}}


def make_image_folder(root: Path, layout: dict[str, dict[str, int]] = LAYOUT, size: int = 16) -> Path:
    """Class folders of small PNG / JPEG images, a distinct colour per class."""
    for split, classes in layout.items():
        for k, (name, count) in enumerate(sorted(classes.items())):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                colour = (255 * (k % 2), 80 * (k % 3), 255 * ((k + 1) % 2))
                Image.new("RGB", (size, size), colour).save(folder / f"{i}.{'png' if i % 2 else 'jpg'}")
    return root


def test_classes_table_of_each_split(tmp_path):
    root = make_image_folder(tmp_path)
    (root / "train" / "cat" / ".DS_Store").write_bytes(b"\0")  # hidden files are not data
    source = ImageFolderSource(root=str(root))
    train, val = source.table("classes", "train"), source.table("classes", "val")
    assert json.loads(train.schema.metadata[b"classes"]) == ["cat", "dog"]
    assert json.loads(val.schema.metadata[b"classes"]) == ["cat", "dog"]
    assert Counter(train.column("label").to_pylist()) == {0: 3, 1: 2}
    assert train.column("image").to_pylist()[:2] == ["train/cat/0.jpg", "train/cat/1.png"]
    assert val.column("image").to_pylist() == ["val/cat/0.jpg", "val/dog/0.jpg"] and val["label"].to_pylist() == [0, 1]
    assert len(set(train.column("image_id").to_pylist())) == 5
    assert source.open_image("val/dog/0.jpg").size == (16, 16)


def test_val_may_lack_a_class_but_keeps_the_train_label_order(tmp_path):
    root = make_image_folder(tmp_path, {"train": {"a": 1, "b": 1, "c": 1}, "val": {"c": 1}})
    val = ImageFolderSource(root=str(root)).table("classes", "val")
    assert val.column("label").to_pylist() == [2] and json.loads(val.schema.metadata[b"classes"]) == ["a", "b", "c"]


@pytest.mark.parametrize(
    ("spoil", "needle"),
    [
        (lambda root: (root / "train" / "bird").mkdir(), "train/bird: class folder without image files"),
        (lambda root: (root / "val" / "dog" / "notes.txt").write_text("x"), "'val/dog/notes.txt' is not an image"),
        (lambda root: make_image_folder(root, {"val": {"fox": 1}}), "class folder 'fox' is not a class of"),
        (lambda root: (root / "val").rename(root / "validation"), "no 'val' folder in"),
    ],
    ids=["empty-class", "not-an-image", "class-only-in-val", "no-val-folder"],
)
def test_bad_folders_are_one_line(tmp_path, spoil, needle):
    root = make_image_folder(tmp_path / "data")
    spoil(root)
    source = ImageFolderSource(root=str(root))
    with pytest.raises(DataError, match="") as err:
        source.table("classes", "train")
        source.table("classes", "val")
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_cmvl_train_refuses_a_non_image_file_in_one_line(tmp_path, cache_dir):
    root = make_image_folder(tmp_path / "data")
    (root / "train" / "cat" / "labels.csv").write_text("a,b")
    result = cli_in_process(
        "train", "task=classification", "dataset=image_folder", f"dataset.root={root}", f"hydra.run.dir={tmp_path}/r",
        cwd=tmp_path,
    )  # fmt: skip
    assert_one_line_error(result, "train/cat/labels.csv' is not an image file")


def test_a_missing_root_is_one_line(tmp_path):
    with pytest.raises(DataError, match="dataset.root: folder not found"):
        ImageFolderSource(root=str(tmp_path / "nope"))


def test_majority_is_none_on_a_tie():
    assert majority(["a", "b", "a"]) == "a" and majority(["a"]) == "a"
    assert majority(["a", "b"]) is None and majority(["a", "a", "b", "b", "c"]) is None


@pytest.mark.parametrize("label", ["shape", "color", "color_shape"])
def test_shapes_classes_are_the_majority_of_each_image_objects(tiny_world, label):
    source = ShapesSource(root=str(tiny_world), num_images=TINY_SPEC.images, image_size=32, seed=3, class_label=label)
    table = source.table("classes", "train")
    names = json.loads(table.schema.metadata[b"classes"])
    assert len(names) == {"shape": 3, "color": 6, "color_shape": 18}[label]
    instances = json.loads((tiny_world / "annotations" / "instances_train.json").read_text())
    shape_of = {c["id"]: c["name"] for c in instances["categories"]}
    objects: dict[int, list[str]] = {}
    for a in instances["annotations"]:
        shape, color = shape_of[a["category_id"]], a["attributes"][0]
        objects.setdefault(a["image_id"], []).append({"shape": shape, "color": color}.get(label, f"{color} {shape}"))
    expected = {i: Counter(v).most_common() for i, v in objects.items()}
    expected = {i: c[0][0] for i, c in expected.items() if len(c) == 1 or c[0][1] > c[1][1]}
    got = {row["image_id"]: names[row["label"]] for row in table.to_pylist()}
    assert got == expected and 0 < len(got) < TINY_SPEC.images["train"]
    assert all(image.startswith("train/COCO_train_") for image in table.column("image").to_pylist())


def test_shapes_refuses_an_unknown_class_label(tiny_world):
    with pytest.raises(ConfigError, match="dataset.class_label=size: choose one of shape, color, color_shape"):
        ShapesSource(root=str(tiny_world), class_label="size")
