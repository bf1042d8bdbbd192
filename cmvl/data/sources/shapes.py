"""The built-in shapes world as a dataset: generated on first use, then read by the official-format readers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from cmvl.data.shapes.scene import COLORS, SHAPES
from cmvl.data.shapes.world import ShapesSpec, ensure_shapes_world
from cmvl.data.sources.base import Source
from cmvl.data.sources.classes import check_class_label, read_shapes_classes
from cmvl.data.sources.coco import read_coco_captions, read_coco_instances
from cmvl.data.sources.visual_genome import read_image_records, read_visual_genome_regions
from cmvl.data.sources.vqa_v2 import read_vqa_v2, vqa_v2_files
from cmvl.data.table_cache import default_cache_dir

SHAPES_IMAGE_PATTERN = "{subtype}/COCO_{subtype}_{image_id:012d}.jpg"


class ShapesSource(Source):
    """Coloured shapes with VQA, caption, object, region and class annotations; no download needed."""

    name = "shapes"
    kinds = frozenset({"qa", "captions", "objects", "regions", "classes"})

    def __init__(
        self,
        *,
        root: str | None = None,
        images: str | None = None,
        split: str = "val",
        num_images: dict[str, int] | None = None,
        questions_per_image: int = 5,
        image_size: int = 64,
        max_objects: int = 5,
        seed: int = 0,
        class_label: str = "shape",
    ) -> None:
        super().__init__(split=split)
        self.class_label = check_class_label(class_label)
        self.spec = ShapesSpec(
            images=dict(num_images or ShapesSpec().images),
            questions_per_image=questions_per_image,
            size=image_size,
            max_objects=max_objects,
            seed=seed,
        )
        self.root = Path(root) if root else default_cache_dir() / "shapes" / self.spec.cache_name()
        ensure_shapes_world(self.root, self.spec)
        self.images = Path(images) if images else self.root

    @property
    def image_root(self) -> Path:
        return self.images

    def _read(self, kind: str, split: str) -> pa.Table:
        if kind == "captions":
            return read_coco_captions(self.root / "annotations" / f"captions_{split}.json", image_folder=split)
        if kind == "regions":  # the world's Visual Genome files hold every split; keep this split's images
            vg = self.root / "visual_genome"
            images = read_image_records(vg / "image_data.json")
            keep = np.array(sorted(i for i, f in images.files.items() if f.startswith(f"{split}/")), dtype=np.int64)
            return read_visual_genome_regions(vg / "region_descriptions.json", images, keep)
        if kind == "classes":
            instances = self.root / "annotations" / f"instances_{split}.json"
            return read_shapes_classes(instances, split, self.class_label, self.class_names())
        if kind == "objects":
            return read_coco_instances([(self.root / "annotations" / f"instances_{split}.json", split)])
        questions, annotations = vqa_v2_files(self.root, split)
        return read_vqa_v2(questions, annotations, image_pattern=SHAPES_IMAGE_PATTERN)

    def class_names(self) -> list[str]:
        """Every class of `class_label`, in label order (all splits share it)."""
        if self.class_label == "shape":
            return list(SHAPES)
        if self.class_label == "color":
            return list(COLORS)
        return [f"{color} {shape}" for color in COLORS for shape in SHAPES]
