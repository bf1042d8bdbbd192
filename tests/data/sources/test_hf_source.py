"""dataset=hf: a `datasets` dataset saved to disk (images embedded as bytes) gives the same qa table as the shapes
world it was made from, decodes the same pixels, and trains and evaluates through the CLI."""

from __future__ import annotations

import json

import datasets
import numpy as np
import pytest
from PIL import Image

from cmvl.data.sources.hf import HFSource
from cmvl.data.sources.shapes import ShapesSource
from cmvl.errors import DataError
from tests.conftest import TINY_SPEC, cli_in_process


@pytest.fixture(scope="module")
def shapes(tiny_world):
    return ShapesSource(root=str(tiny_world), num_images=TINY_SPEC.images, image_size=TINY_SPEC.size, seed=3)


@pytest.fixture(scope="module")
def hf_folder(shapes, tmp_path_factory):
    """The shapes world's train/val questions as a DatasetDict with embedded image bytes and 10 answers a row."""
    splits = {}
    for split, hf_split in (("train", "train"), ("val", "validation")):
        table = shapes.table("qa", split)
        images = [{"bytes": (shapes.root / p).read_bytes(), "path": None} for p in table.column("image").to_pylist()]
        splits[hf_split] = datasets.Dataset.from_dict(
            {
                "picture": images,
                "question": table.column("question").to_pylist(),
                "answers": table.column("answers").to_pylist(),
                "qid": table.column("question_id").to_pylist(),
            },
            features=datasets.Features(
                {
                    "picture": datasets.Image(),
                    "question": datasets.Value("string"),
                    "answers": datasets.Sequence(datasets.Value("string")),
                    "qid": datasets.Value("int64"),
                }
            ),
        )
    folder = tmp_path_factory.mktemp("hf") / "shapes_vqa"
    datasets.DatasetDict(splits).save_to_disk(str(folder))
    return folder


COLUMNS = {"image": "picture", "question_id": "qid"}


def test_table_matches_the_source_data_and_images_decode_the_same(shapes, hf_folder, cache_dir):
    source = HFSource(path=str(hf_folder), columns=COLUMNS)
    expected, got = shapes.table("qa", "val"), source.table("qa", "val")
    for column in ("question_id", "question", "answers"):
        assert got.column(column).to_pylist() == expected.column(column).to_pylist()
    # identical bytes share an image id: as many ids as the world has images
    assert len(set(got.column("image_id").to_pylist())) == len(set(expected.column("image_id").to_pylist()))
    first = source.open_image(got.column("image")[0].as_py())
    with Image.open(shapes.root / expected.column("image")[0].as_py()) as im:
        assert np.array_equal(np.asarray(first), np.asarray(im.convert("RGB")))


def test_bad_column_and_split_names_say_which(hf_folder, cache_dir):
    with pytest.raises(DataError, match="dataset.columns.question=query: no such column in split 'train'"):
        HFSource(path=str(hf_folder), columns={**COLUMNS, "question": "query"}).table("qa", "train")
    with pytest.raises(DataError, match="no split \\['dev'\\]"):
        HFSource(path=str(hf_folder), split_names={"train": "train", "val": "dev"})


def test_vqa_on_an_hf_dataset_through_the_cli(hf_folder, tmp_path, cache_dir):
    run_dir = tmp_path / "run"
    dataset = [
        "dataset=hf",
        f"dataset.path={hf_folder}",
        "dataset.columns.image=picture",
        "dataset.columns.question_id=qid",
    ]
    small = ["trainer=debug", "data.num_workers=0", "task.min_answer_count=1", "model.dim=32", "vision.image_size=32"]
    trained = cli_in_process("train", *dataset, *small, f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr[-3000:]
    evaluated = cli_in_process("eval", f"ckpt={run_dir / 'checkpoints' / 'best.ckpt'}", cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    predictions = json.loads((run_dir / "checkpoints" / "predictions_vqa_val.json").read_text())
    assert len(predictions) == TINY_SPEC.images["val"] * TINY_SPEC.questions_per_image
    prepare = cli_in_process("data", "prepare", f"out={tmp_path / 'x'}", *dataset, cwd=tmp_path)
    assert prepare.returncode == 2 and "keeps its images inside the dataset" in prepare.stderr


def test_repeated_question_ids_are_refused_and_images_decode_through_the_one_decoder(tmp_path, cache_dir):
    """A 16-bit PNG inside the dataset decodes as grey (not clipped to white); a repeated id column is refused."""
    grey = np.full((4, 4), 128 * 257, dtype=np.uint16)
    buffer = tmp_path / "grey16.png"
    Image.fromarray(grey).save(buffer)
    rows = {
        "picture": [{"bytes": buffer.read_bytes(), "path": None}] * 3,
        "question": ["what?", "where?", "why?"],
        "answers": [["a"], ["b"], ["c"]],
        "qid": [7, 8, 7],
    }
    folder = tmp_path / "hf"
    datasets.DatasetDict(
        {"train": datasets.Dataset.from_dict(rows).cast_column("picture", datasets.Image())}
    ).save_to_disk(str(folder))
    source = HFSource(path=str(folder), split_names={"train": "train"}, columns=COLUMNS)
    with pytest.raises(DataError, match=r"split train column qid: question_id 7 occurs 2 times"):
        source.table("qa", "train")
    pixels = np.asarray(source.open_image("train:0"))
    assert pixels.shape == (4, 4, 3) and (pixels == 128).all()
