"""Write the shapes world to disk in the official VQA v2, COCO (+ Karpathy) and Visual Genome layouts.

Layout under ``root``::

    v2_OpenEnded_mscoco_{split}_questions.json   v2_mscoco_{split}_annotations.json     (VQA v2)
    {split}/COCO_{split}_{image_id:012d}.jpg                                              (images)
    annotations/captions_{split}.json            annotations/instances_{split}.json     (COCO)
    dataset_coco.json                                                                     (Karpathy split file)
    visual_genome/{image_data,objects,attributes,relationships,region_descriptions,question_answers}.json
    shapes.json                                                                           (how it was made)

The directory appears atomically (written under a temporary name, then renamed), so concurrent processes
(DDP ranks, sweep jobs) never see a half-written world; the temporary folder of a killed generation is removed
by the next generation of the same world (cmvl/atomic_file.py names its owner).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from cmvl.atomic_file import TEMP_SUFFIX, apply_umask, remove_stale_temps, temp_prefix
from cmvl.data.shapes.captions import make_captions
from cmvl.data.shapes.questions import RELATIONS, annotate, is_related, sample_questions
from cmvl.data.shapes.render import render_scene, shape_area, shape_polygon
from cmvl.data.shapes.scene import SHAPES, Scene, sample_scene
from cmvl.errors import DataError
from cmvl.progress import track

FORMAT_VERSION = 1
SPLITS = ("train", "val", "test")
_VQA_INFO = {"description": "cmvl shapes world in the VQA v2 format", "version": "2.0", "year": 2026}
_LICENSE = {"url": "http://creativecommons.org/licenses/by/4.0/", "name": "Creative Commons Attribution 4.0"}


@dataclass(frozen=True)
class ShapesSpec:
    """What a shapes world contains; two worlds with equal specs are byte-identical."""

    images: dict[str, int] = field(default_factory=lambda: {"train": 4000, "val": 500, "test": 500})
    questions_per_image: int = 5
    size: int = 64
    max_objects: int = 5
    seed: int = 0

    def cache_name(self) -> str:
        counts = "-".join(f"{s}{self.images.get(s, 0)}" for s in SPLITS)
        return f"v{FORMAT_VERSION}-{counts}-q{self.questions_per_image}-px{self.size}-o{self.max_objects}-s{self.seed}"


def image_file(split: str, image_id: int) -> str:
    return f"{split}/COCO_{split}_{image_id:012d}.jpg"


def ensure_shapes_world(root: str | Path, spec: ShapesSpec) -> Path:
    """Generate the world at `root` unless a complete one with the same spec is already there."""
    root = Path(root)
    marker = root / "shapes.json"  # written last, inside the temporary folder: a world with it is complete
    if marker.exists():
        return root
    if root.is_dir() and any(root.iterdir()):  # not a generation in progress: those appear whole, by a rename
        raise DataError(f"{root} holds files but no complete shapes world (no shapes.json); remove it or use another")
    root.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(root.parent, target=root.name)  # what a killed generation of this world left
    tmp = Path(tempfile.mkdtemp(prefix=temp_prefix(root.name), suffix=TEMP_SUFFIX, dir=root.parent))
    apply_umask(tmp, directory=True)  # the world is shared (the cache): mkdtemp's 0700 would keep it private
    try:
        write_shapes_world(tmp, spec)
        try:
            os.rename(tmp, root)  # replaces an empty `root`, never a non-empty one
        except OSError:
            if not marker.exists():  # not a concurrent writer (DDP rank, sweep job) that finished first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def write_shapes_world(root: Path, spec: ShapesSpec) -> None:
    rng = np.random.default_rng(spec.seed)
    next_image_id = 1
    karpathy_images: list[dict] = []
    vg: dict[str, list] = {
        k: []
        for k in ("image_data", "objects", "attributes", "relationships", "region_descriptions", "question_answers")
    }
    for split in SPLITS:
        n = spec.images.get(split, 0)
        scenes = [
            sample_scene(rng, image_id=next_image_id + i, size=spec.size, max_objects=spec.max_objects)
            for i in range(n)
        ]
        next_image_id += n
        (root / split).mkdir(parents=True, exist_ok=True)
        for scene in track(scenes, total=n, description=f"shapes: rendering {split}"):
            render_scene(scene).save(root / image_file(split, scene.image_id), quality=95, subsampling=0)
        _write_vqa(root, split, scenes, rng, spec.questions_per_image)
        captions = {s.image_id: make_captions(s, rng) for s in scenes}
        _write_coco(root, split, scenes, captions)
        karpathy_images += [_karpathy_record(split, s, captions[s.image_id]) for s in scenes]
        _add_visual_genome(vg, split, scenes, rng)
    _dump(root / "dataset_coco.json", {"images": karpathy_images, "dataset": "coco"})
    for name, records in vg.items():
        _dump(root / "visual_genome" / f"{name}.json", records)
    _dump(root / "shapes.json", {"format_version": FORMAT_VERSION, **asdict(spec)})


def _dump(path: Path, obj: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f)


def _write_vqa(root: Path, split: str, scenes: list[Scene], rng: np.random.Generator, per_image: int) -> None:
    questions, annotations = [], []
    for scene in scenes:
        for k, q in enumerate(sample_questions(scene, rng, per_image)):
            qid = scene.image_id * 1000 + k  # the official id scheme
            questions.append({"image_id": scene.image_id, "question": q.text, "question_id": qid})
            answers, majority = annotate(q, rng)
            annotations.append(
                {
                    "question_type": q.question_type,
                    "multiple_choice_answer": majority,
                    "answers": answers,
                    "image_id": scene.image_id,
                    "answer_type": q.answer_type,
                    "question_id": qid,
                }
            )
    header = {"info": _VQA_INFO, "license": _LICENSE, "data_subtype": split}
    _dump(
        root / f"v2_OpenEnded_mscoco_{split}_questions.json",
        {**header, "task_type": "Open-Ended", "data_type": "mscoco", "questions": questions},
    )
    _dump(root / f"v2_mscoco_{split}_annotations.json", {**header, "data_type": "mscoco", "annotations": annotations})


def _coco_image(split: str, scene: Scene) -> dict:
    return {
        "license": 1,
        "file_name": Path(image_file(split, scene.image_id)).name,
        "height": scene.size,
        "width": scene.size,
        "id": scene.image_id,
    }


def _write_coco(root: Path, split: str, scenes: list[Scene], captions: dict[int, list[str]]) -> None:
    info = {"description": "cmvl shapes world in the COCO format", "version": "1.0", "year": 2026}
    licenses = [{**_LICENSE, "id": 1}]
    images = [_coco_image(split, s) for s in scenes]
    caption_records = [
        {"image_id": s.image_id, "id": s.image_id * 10 + k, "caption": c}
        for s in scenes
        for k, c in enumerate(captions[s.image_id])
    ]
    categories = [{"supercategory": "shape", "id": i + 1, "name": name} for i, name in enumerate(SHAPES)]
    instances = []
    for s in scenes:
        for k, o in enumerate(s.objects):
            polygon = [round(v, 2) for point in shape_polygon(o) for v in point]
            instances.append(
                {
                    "segmentation": [polygon],
                    "area": round(shape_area(o), 2),
                    "iscrowd": 0,
                    "image_id": s.image_id,
                    "bbox": [round(v, 2) for v in o.box_xywh],
                    "category_id": SHAPES.index(o.shape) + 1,
                    "id": s.image_id * 10 + k,
                    "attributes": [o.color, o.size],
                }
            )
    base = {"info": info, "licenses": licenses, "images": images}
    _dump(root / "annotations" / f"captions_{split}.json", {**base, "annotations": caption_records})
    _dump(
        root / "annotations" / f"instances_{split}.json", {**base, "annotations": instances, "categories": categories}
    )


def _karpathy_record(split: str, scene: Scene, captions: list[str]) -> dict:
    sentences = [
        {
            "raw": c,
            "tokens": c.lower().rstrip(".").replace(",", "").replace(":", "").split(),
            "imgid": scene.image_id,
            "sentid": scene.image_id * 10 + k,
        }
        for k, c in enumerate(captions)
    ]
    return {
        "filepath": split,
        "filename": Path(image_file(split, scene.image_id)).name,
        "imgid": scene.image_id,
        "cocoid": scene.image_id,
        "split": split,
        "sentids": [s["sentid"] for s in sentences],
        "sentences": sentences,
    }


def _vg_object(scene: Scene, k: int) -> dict:
    o = scene.objects[k]
    x, y, w, h = (int(round(v)) for v in o.box_xywh)
    return {
        "object_id": scene.image_id * 10 + k,
        "x": x,
        "y": y,
        "w": w,
        "h": h,
        "names": [o.shape],
        "synsets": [f"{o.shape}.n.01"],
    }


def _add_visual_genome(vg: dict[str, list], split: str, scenes: list[Scene], rng: np.random.Generator) -> None:
    for s in scenes:
        iid = s.image_id
        vg["image_data"].append(
            {
                "width": s.size,
                "url": f"shapes://{image_file(split, iid)}",
                "height": s.size,
                "image_id": iid,
                "coco_id": iid,
                "flickr_id": None,
            }
        )
        objects = [_vg_object(s, k) for k in range(len(s.objects))]
        vg["objects"].append({"image_id": iid, "objects": objects})
        vg["attributes"].append(
            {
                "image_id": iid,
                "attributes": [{**obj, "attributes": [o.color, o.size]} for obj, o in zip(objects, s.objects)],
            }
        )
        margin = 0.05 * s.size
        relationships = []
        for i, a in enumerate(s.objects):
            for j, b in enumerate(s.objects):
                for rel in RELATIONS:
                    if i != j and is_related(a, b, rel, margin):
                        subject = {**objects[i], "name": a.shape}
                        obj = {**objects[j], "name": b.shape}
                        for d in (subject, obj):
                            d.pop("names")
                        relationships.append(
                            {
                                "relationship_id": len(relationships) + iid * 100,
                                "predicate": rel,
                                "synsets": [],
                                "subject": subject,
                                "object": obj,
                            }
                        )
        vg["relationships"].append({"image_id": iid, "relationships": relationships})
        vg["region_descriptions"].append(
            {
                "id": iid,
                "regions": [
                    {
                        "region_id": iid * 10 + k,
                        "image_id": iid,
                        "phrase": f"the {o.phrase}",
                        "x": objects[k]["x"],
                        "y": objects[k]["y"],
                        "width": objects[k]["w"],
                        "height": objects[k]["h"],
                    }
                    for k, o in enumerate(s.objects)
                ],
            }
        )
        qas = [
            {
                "qa_id": iid * 10 + k,
                "image_id": iid,
                "question": q.text,
                "answer": q.answer.capitalize() + ".",
                "a_objects": [],
                "q_objects": [],
            }
            for k, q in enumerate(sample_questions(s, rng, 3))
        ]
        vg["question_answers"].append({"id": iid, "qas": qas})
