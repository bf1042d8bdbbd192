"""Visual Genome from its official JSON files: question-answer pairs (`qa`), grounding phrases (`regions`: region
descriptions, or relationships as "subject predicate object" with the subject's box) and objects (`objects`: names
or attributes as tagging labels), split by image."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cmvl.data.jsonfile import load_json, optional, records, require_unique, required
from cmvl.data.sources.base import (
    OBJECTS_SCHEMA,
    QA_SCHEMA,
    REGIONS_SCHEMA,
    FolderSource,
    answer_type,
    question_type,
    single_answer_annotations,
)
from cmvl.data.table_cache import cached_table
from cmvl.errors import ConfigError, DataError

READER_VERSION = 5  # bump when the tables built here change, so cached tables are rebuilt


# The file each table is read from (objects: object names, or their attributes).
ANNOTATION_FILES = {
    "qa": "question_answers.json",
    "regions": "region_descriptions.json",
    "relationships": "relationships.json",
    "names": "objects.json",
    "attributes": "attributes.json",
}


class ImageRecords(NamedTuple):
    files: dict[int, str]  # image id → file relative to the VG root (`VG_100K/…jpg` or `VG_100K_2/…jpg`)
    coco_ids: dict[int, int]  # image id → COCO image id, for the VG images that are also COCO images
    sizes: dict[int, tuple[int, int]]  # image id → (width, height) in pixels


IMAGE_RECORD = pa.struct(
    [
        optional("image_id", pa.int64()),  # v1.2/v1.4 files say `image_id`, v1.0 says `id`
        optional("id", pa.int64()),
        required("url", pa.string()),
        required("width", pa.int32()),
        required("height", pa.int32()),
        optional("coco_id", pa.int64()),
    ]
)


def read_image_records(image_data_file: Path) -> ImageRecords:
    """The image records of `image_data.json` (file from the record's url, COCO id, size)."""
    found = records(
        load_json(image_data_file, what="Visual Genome image_data.json", layout=pa.list_(IMAGE_RECORD)), IMAGE_RECORD
    )
    image_ids = pc.coalesce(found.field("image_id"), found.field("id"))
    if image_ids.null_count:
        row = int(np.flatnonzero(image_ids.is_null().to_numpy(zero_copy_only=False))[0])
        raise DataError(f"{image_data_file}: [{row}] has neither 'image_id' nor 'id' (expected an integer)")
    ids = image_ids.to_numpy()
    require_unique(ids, path=image_data_file, key="image_id")
    urls = found.field("url").to_pylist()
    files = ["/".join(url.rstrip("/").split("/")[-2:]) for url in urls]
    sizes = zip(found.field("width").to_pylist(), found.field("height").to_pylist())
    coco = found.field("coco_id")
    with_coco = coco.is_valid().to_numpy(zero_copy_only=False)
    return ImageRecords(
        files=dict(zip(ids.tolist(), files)),
        coco_ids=dict(zip(ids[with_coco].tolist(), coco.drop_null().to_pylist())),
        sizes=dict(zip(ids.tolist(), sizes)),
    )


def image_split_share(image_ids: np.ndarray, seed: int) -> np.ndarray:
    """A number in [0, 1) per image from a hash of (seed, image id): the split of an image never depends on which
    other images are present, so partial downloads and the full set agree."""
    digests = [hashlib.sha1(f"{seed}:{i}".encode()).digest()[:8] for i in image_ids.tolist()]
    return np.array([int.from_bytes(d, "big") for d in digests], dtype=np.float64) / 2.0**64


def _image_entries(
    path: Path, list_key: str, entry: pa.StructType, images: ImageRecords, keep_image: np.ndarray | None
) -> Iterator[tuple[int, dict]]:
    """(image id, entry) for every entry of a per-image VG file (`[{…, list_key: [entry, …]}]`, each entry checked
    against `entry`) whose image is in `keep_image` (all when None); the entry's own `image_id` wins over its
    record's (`image_id`, v1.0 `id`)."""
    entry = pa.struct([*entry, optional("image_id", pa.int64())])
    record = pa.struct(
        [optional("image_id", pa.int64()), optional("id", pa.int64()), required(list_key, pa.list_(entry))]
    )
    documents = load_json(path, what=f"Visual Genome {path.name}", layout=pa.list_(record))
    keep = None if keep_image is None else set(keep_image.tolist())
    for document in documents:
        for item in document[list_key]:
            image_id = item.get("image_id", document.get("image_id", document.get("id", -1)))
            if keep is not None and image_id not in keep:
                continue
            if image_id not in images.files:
                raise DataError(f"{path}: image {image_id} is not in image_data.json")
            yield image_id, item


BOX = [required(key, pa.float64()) for key in ("x", "y", "w", "h")]
NAMES = [optional("names", pa.list_(pa.string())), optional("name", pa.string())]  # v1.2+ `names`, v1.0 `name`
QA_ENTRY = pa.struct(
    [required("qa_id", pa.int64()), required("question", pa.string()), required("answer", pa.string())]
)
REGION_ENTRY = pa.struct(
    [
        required("phrase", pa.string()),
        *(required(key, pa.float64()) for key in ("x", "y", "width", "height")),
        optional("region_id", pa.int64()),
        optional("id", pa.int64()),
    ]
)
RELATIONSHIP_ENTRY = pa.struct(
    [
        required("predicate", pa.string()),
        required("subject", pa.struct([*NAMES, *BOX])),  # the phrase grounds the subject: its box is needed
        required("object", pa.struct(NAMES)),
        optional("relationship_id", pa.int64()),
        optional("id", pa.int64()),
    ]
)
OBJECT_ENTRY = pa.struct([*NAMES, *BOX])
ATTRIBUTE_ENTRY = pa.struct([optional("attributes", pa.list_(pa.string())), *BOX])


def read_visual_genome_qa(qa_file: Path, images: ImageRecords, keep_image: np.ndarray | None) -> pa.Table:
    """All QA pairs (of the images whose id is in `keep_image`, when given) in the `qa` layout.

    VG has one answer per question: it becomes ten identical normalised answers (`single_answer_annotations`).
    """
    columns: dict[str, list] = {name: [] for name in QA_SCHEMA.names}
    for image_id, qa in _image_entries(qa_file, "qas", QA_ENTRY, images, keep_image):
        answers = single_answer_annotations(qa["answer"])
        columns["question_id"].append(int(qa["qa_id"]))
        columns["image_id"].append(image_id)
        columns["image"].append(images.files[image_id])
        columns["question"].append(qa["question"])
        columns["answers"].append(answers)
        columns["answer_type"].append(answer_type(answers[0]))
        columns["question_type"].append(question_type(qa["question"]))
        columns["multiple_choice_answer"].append(answers[0])
    require_unique(np.asarray(columns["question_id"], dtype=np.int64), path=qa_file, key="qa_id")
    return pa.table(columns, schema=QA_SCHEMA)


def _regions_table(rows: Iterator[tuple[int, int, str, tuple]], images: ImageRecords) -> pa.Table:
    """The `regions` layout from (region id, image id, phrase, (x, y, w, h)) rows: boxes clipped to the image as
    [x, y, width, height] pixels; rows with an empty phrase or a box with no area left are dropped."""
    columns: dict[str, list] = {name: [] for name in REGIONS_SCHEMA.names}
    for region_id, image_id, phrase, (x, y, w, h) in rows:
        width, height = images.sizes[image_id]
        x0, y0 = min(max(float(x), 0.0), width), min(max(float(y), 0.0), height)
        x1, y1 = min(float(x) + float(w), width), min(float(y) + float(h), height)
        phrase = str(phrase).strip()
        if x1 <= x0 or y1 <= y0 or not phrase:
            continue  # degenerate box or empty phrase: nothing to ground
        columns["region_id"].append(region_id)
        columns["image_id"].append(image_id)
        columns["image"].append(images.files[image_id])
        columns["width"].append(width)
        columns["height"].append(height)
        columns["phrase"].append(phrase)
        columns["box"].append([x0, y0, x1 - x0, y1 - y0])
    return pa.table(columns, schema=REGIONS_SCHEMA)


def read_visual_genome_regions(region_file: Path, images: ImageRecords, keep_image: np.ndarray | None) -> pa.Table:
    """All region descriptions (of the images in `keep_image`, when given) in the `regions` layout: one row per
    (phrase, box)."""
    rows = (
        (int(r.get("region_id", r.get("id", -1))), image_id, r["phrase"], (r["x"], r["y"], r["width"], r["height"]))
        for image_id, r in _image_entries(region_file, "regions", REGION_ENTRY, images, keep_image)
    )
    return _regions_table(rows, images)


def read_visual_genome_relationships(
    relationships_file: Path, images: ImageRecords, keep_image: np.ndarray | None
) -> pa.Table:
    """The relationships (of the images in `keep_image`, when given) as grounding phrases in the `regions` layout:
    "<subject> <predicate> <object>" ("man wears sneakers") with the subject's box, the entity the phrase refers
    to. Subjects and objects are named by their first name (v1.2+ `names`, v1.0 `name`), lower case."""
    rows = []
    for image_id, rel in _image_entries(relationships_file, "relationships", RELATIONSHIP_ENTRY, images, keep_image):
        subject, obj = rel["subject"], rel["object"]
        names = _object_terms(subject, "names"), _object_terms(obj, "names")
        predicate = str(rel["predicate"]).strip().lower()
        if not (names[0] and names[1] and predicate):
            continue
        box = (subject["x"], subject["y"], subject["w"], subject["h"])
        relationship_id = int(rel.get("relationship_id", rel.get("id", -1)))
        rows.append((relationship_id, image_id, f"{names[0][0]} {predicate} {names[1][0]}", box))
    return _regions_table(iter(rows), images)


OBJECT_LABELS = ("names", "attributes")
REGION_PHRASES = {"descriptions": "regions", "relationships": "relationships"}  # dataset.region_phrases → file


def _object_terms(entry: dict, labels: str) -> list[str]:
    """An object's names (v1.2+ `names`, v1.0 `name`) or its attributes, lower case and stripped."""
    if labels == "attributes":
        terms = entry.get("attributes") or []
    else:
        terms = entry.get("names") or ([entry["name"]] if entry.get("name") else [])
    return [t.strip().lower() for t in terms if isinstance(t, str) and t.strip()]


def read_visual_genome_objects(
    objects_file: Path,
    images: ImageRecords,
    keep_image: np.ndarray,
    *,
    vocabulary_images: np.ndarray,
    num_categories: int,
    labels: str = "names",
) -> pa.Table:
    """The `objects` table of the images in `keep_image`: labels are the `num_categories` most frequent object
    names (or attributes, from attributes.json) on `vocabulary_images` (the training split, so every split shares
    one label set; ties by spelling), each with its object's box. Objects outside the vocabulary are left out."""
    per_image: dict[int, list[tuple[list[str], list[float]]]] = {}
    counts: Counter[str] = Counter()
    vocabulary_ids, keep_ids = set(vocabulary_images.tolist()), set(keep_image.tolist())
    list_key, entry_layout = ("attributes", ATTRIBUTE_ENTRY) if labels == "attributes" else ("objects", OBJECT_ENTRY)
    for image_id, entry in _image_entries(objects_file, list_key, entry_layout, images, None):
        terms = _object_terms(entry, labels)
        if image_id in vocabulary_ids:
            counts.update(terms)
        if image_id in keep_ids:
            box = [float(entry["x"]), float(entry["y"]), float(entry["w"]), float(entry["h"])]
            per_image.setdefault(image_id, []).append((terms, box))
    categories = [t for t, _ in sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:num_categories]]
    index = {t: i for i, t in enumerate(categories)}
    columns: dict[str, list] = {name: [] for name in OBJECTS_SCHEMA.names}
    for image_id in sorted(per_image):
        width, height = images.sizes[image_id]
        found = [(index[t], box) for terms, box in per_image[image_id] for t in dict.fromkeys(terms) if t in index]
        columns["image_id"].append(image_id)
        columns["image"].append(images.files[image_id])
        columns["width"].append(width)
        columns["height"].append(height)
        columns["labels"].append([label for label, _ in found])
        columns["boxes"].append([box for _, box in found])
        columns["iscrowd"].append([False] * len(found))
        columns["area"].append([box[2] * box[3] for _, box in found])  # Visual Genome objects have boxes only
        columns["phrases"].append([categories[label] for label, _ in found])
    return pa.table(columns, schema=OBJECTS_SCHEMA.with_metadata({"categories": json.dumps(categories)}))


SPLIT_FILE = pa.map_(pa.string(), pa.list_(pa.int64()))  # split name → image ids


class VisualGenomeSource(FolderSource):
    """Visual Genome (v1.0/1.2/1.4 key variants). Splits are a seeded image-level partition (`split_fractions`,
    `split_seed`) or a user split file (JSON: split name → list of image ids)."""

    name = "visual_genome"
    kinds = frozenset({"qa", "regions", "objects"})

    def __init__(
        self,
        *,
        root: str,
        images: str | None = None,
        split: str = "val",
        split_fractions: dict[str, float] | None = None,
        split_seed: int = 0,
        split_file: str | None = None,
        object_categories: int = 150,
        object_labels: str = "names",
        region_phrases: str = "descriptions",
        missing_images: str = "skip",
    ) -> None:
        if object_labels not in OBJECT_LABELS:
            raise ConfigError(f"dataset.object_labels={object_labels}: choose one of {', '.join(OBJECT_LABELS)}")
        if region_phrases not in REGION_PHRASES:
            raise ConfigError(f"dataset.region_phrases={region_phrases}: choose one of {', '.join(REGION_PHRASES)}")
        self.object_categories, self.object_labels = object_categories, object_labels
        self.region_phrases = region_phrases
        super().__init__(root=root, images=images, split=split, missing_images=missing_images)
        self.split_seed = split_seed
        self.split_file = Path(split_file) if split_file else None
        if self.split_file is not None:
            split_ids = load_json(self.split_file, what="Visual Genome split file", layout=SPLIT_FILE)
            self.split_ids = {str(k): np.asarray(v, dtype=np.int64) for k, v in split_ids.items()}
            self.fractions = None
            self.splits = tuple(self.split_ids)
        else:
            self.fractions = {str(k): float(v) for k, v in (split_fractions or {}).items()}
            total = sum(self.fractions.values())
            if not self.fractions or any(v < 0 for v in self.fractions.values()) or abs(total - 1) > 1e-6:
                raise ConfigError(f"dataset.split_fractions={self.fractions}: non-negative shares that sum to 1")
            self.splits = tuple(self.splits_for({"split_fractions": self.fractions}))

    @classmethod
    def splits_for(cls, args: Mapping[str, Any]) -> tuple[str, ...] | None:
        if args.get("split_file"):
            return None  # the split file's keys
        return tuple(args.get("split_fractions") or {})

    def _split_images(self, split: str, image_ids: np.ndarray) -> np.ndarray:
        if self.fractions is None:
            return self.split_ids[split]
        share = image_split_share(image_ids, self.split_seed)
        names = list(self.fractions)
        bounds = np.cumsum([self.fractions[n] for n in names])
        index = names.index(split)
        low = bounds[index - 1] if index else 0.0
        return image_ids[(share >= low) & (share < bounds[index])]

    def _read(self, kind: str, split: str) -> pa.Table:
        image_data = self.root / "image_data.json"
        file_kind = {"objects": self.object_labels, "regions": REGION_PHRASES[self.region_phrases]}.get(kind, kind)
        annotation_file = self.root / ANNOTATION_FILES[file_kind]
        params = {"split": split, "fractions": self.fractions, "seed": self.split_seed, "version": READER_VERSION}

        def build() -> pa.Table:
            images = read_image_records(image_data)
            all_ids = np.array(sorted(images.files), dtype=np.int64)
            keep = self._split_images(split, all_ids)
            if kind == "qa":
                return read_visual_genome_qa(annotation_file, images, keep)
            if kind == "regions" and self.region_phrases == "relationships":
                return read_visual_genome_relationships(annotation_file, images, keep)
            if kind == "regions":
                return read_visual_genome_regions(annotation_file, images, keep)
            if "train" not in self.splits:
                raise ConfigError("dataset=visual_genome objects: the label set comes from a 'train' split; add one")
            return read_visual_genome_objects(
                annotation_file,
                images,
                keep,
                vocabulary_images=self._split_images("train", all_ids),
                num_categories=self.object_categories,
                labels=self.object_labels,
            )

        if kind == "objects":
            params.update(categories=self.object_categories, labels=self.object_labels)
        if kind == "regions":
            params.update(phrases=self.region_phrases)
        inputs = [image_data, annotation_file, *([self.split_file] if self.split_file else [])]
        table = cached_table(f"visual_genome_{kind}", inputs, params, build)
        return self.with_images_present(table, split)
