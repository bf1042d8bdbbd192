"""Corrupt or missing images: training skips them within a budget and keeps batches full; evaluation refuses them;
the error a loader worker raises reaches the user as one line."""

from __future__ import annotations

import pyarrow as pa
import pytest
from PIL import Image
from torch.utils.data import DataLoader

from cmvl.data.datamodule import ImageTextDataset
from cmvl.data.images import build_transform, load_image
from cmvl.data.text import TokenizedTexts, TrainedWordPiece
from cmvl.errors import DataError, one_line


@pytest.fixture()
def images(tmp_path):
    for name, color in (("a.jpg", "red"), ("c.jpg", "blue")):
        Image.new("RGB", (16, 16), color).save(tmp_path / name)
    (tmp_path / "b.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")  # corrupt
    return tmp_path


def _dataset(folder, max_bad_fraction):
    table = pa.table({"image": ["a.jpg", "a.jpg", "b.jpg", "b.jpg", "c.jpg", "c.jpg"]})
    texts = [f"text {i}" for i in range(6)]
    return ImageTextDataset(
        table,
        texts,
        TokenizedTexts(TrainedWordPiece().build(texts), texts, 8),
        lambda name: load_image(folder / name),
        build_transform(image_size=8, train=False),
        max_bad_fraction=max_bad_fraction,
    )


def test_training_skips_a_corrupt_image_and_keeps_the_batch_full(images, capfd):
    dataset = _dataset(images, max_bad_fraction=0.5)
    samples = dataset.__getitems__([0, 2, 3, 5])
    assert len(samples) == 4
    assert [s.index for s in samples] == [0, 4, 4, 5]  # the rows of b.jpg → the next readable row
    err = capfd.readouterr().err
    assert "cmvl: skipped unreadable image:" in err and "b.jpg" in err and "(1 of at most 1)" in err
    assert dataset.bad_images == {int(dataset.image_ids[2])}


def test_past_the_budget_training_stops_with_one_line(images):
    dataset = _dataset(images, max_bad_fraction=0.0)
    with pytest.raises(DataError, match=r"1 unreadable training images, more than data.max_bad_fraction=0.0"):
        dataset.__getitems__([2])


def test_evaluation_never_substitutes_and_a_worker_error_reads_as_one_line(images):
    dataset = _dataset(images, max_bad_fraction=None)
    with pytest.raises(DataError, match="unreadable image"):
        dataset.__getitems__([0, 2])
    loader = DataLoader(dataset, batch_size=6, num_workers=1, collate_fn=list)
    with pytest.raises(DataError) as caught:
        next(iter(loader))
    assert "Original Traceback" in str(caught.value)  # how torch re-raises a worker's exception
    line = one_line(caught.value)
    assert "\n" not in line and line.startswith("unreadable image:") and "b.jpg" in line


def test_a_training_run_with_a_truncated_an_empty_and_a_missing_image_completes(tiny_world, tmp_path):
    import shutil

    from tests.conftest import TINY_TRAINING, TINY_WORLD, cli_in_process

    images = tmp_path / "images"
    for split in ("train", "val", "test"):
        shutil.copytree(tiny_world / split, images / split)
    first, second, third = sorted((images / "train").iterdir())[:3]
    first.write_bytes(first.read_bytes()[:200])  # truncated JPEG
    second.write_bytes(b"")  # zero bytes
    third.unlink()  # gone after start-up checks
    # 300 rows in batches of 10: one epoch reads every training image
    common = [*TINY_WORLD, *TINY_TRAINING, f"dataset.images={images}", "trainer.limit_train_batches=null"]
    result = cli_in_process(
        "train", *common, "trainer.max_epochs=1", "data.batch_size=10", "data.max_bad_fraction=0.1", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-3000:]
    skipped = [line for line in result.stderr.splitlines() if line.startswith("cmvl: skipped")]
    assert len(skipped) == 3 and skipped[-1].endswith("(3 of at most 6)")
    for path in (first, second, third):
        assert sum(path.name in line for line in skipped) == 1
    # Evaluation refuses instead: an unreadable validation image is an error with one line, exit 2.
    (images / "val" / sorted(p.name for p in (images / "val").iterdir())[0]).write_bytes(b"")
    [best] = tmp_path.glob("outputs/*/*/checkpoints/best.ckpt")
    evaluated = cli_in_process("eval", f"ckpt={best}", f"dataset.images={images}", cwd=tmp_path)
    assert evaluated.returncode == 2
    assert evaluated.stderr.strip().splitlines()[-1].startswith("cmvl: error: unreadable image:")
