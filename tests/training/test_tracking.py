"""Tracking: CSV + TensorBoard + wandb (offline) together, sample-prediction pictures, training curves."""

from PIL import Image

from cmvl.training.samples import CELL, COLUMNS
from tests.conftest import TINY_TRAINING, TINY_WORLD_ANY_TASK, cli_in_process, run_cli


def _image_size(path) -> tuple[int, int]:
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG"
        return image.size


def test_all_loggers_pictures_and_curves(tmp_path, cache_dir):
    run_dir = tmp_path / "run"
    result = run_cli(
        "train", "task=grounding", *TINY_WORLD_ANY_TASK, *TINY_TRAINING, "logger=[csv,tensorboard,wandb]",
        "samples.count=6", f"hydra.run.dir={run_dir}", cwd=tmp_path, env_extra={"WANDB_MODE": "offline"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]

    # One picture per validation epoch: 6 samples in rows of COLUMNS, each image CELL pixels, text below.
    for epoch in (0, 1):
        width, height = _image_size(run_dir / "samples" / f"epoch{epoch:03d}.png")
        assert width == COLUMNS * (CELL + 4) + 4 and height > 2 * CELL
    # Curves: loss, validation and learning-rate panels (8 × 3 inches each at 100 dpi), printed at the end.
    assert _image_size(run_dir / "curves.png") == (800, 900)
    assert f"curves: {run_dir / 'curves.png'}" in result.stdout

    # TensorBoard event files, and a wandb offline run holding the logged metrics, the config and the pictures.
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    (wandb_run,) = (run_dir / "wandb").glob("offline-run-*")
    records = next(wandb_run.glob("run-*.wandb")).read_bytes()
    for needle in (b"val/grounding/acc_iou50", b"train/loss_step", b"best/val/grounding/mean_iou", b"model"):
        assert needle in records, needle
    assert list((wandb_run / "files" / "media" / "images").rglob("*.png"))

    out = tmp_path / "again.png"
    plotted = cli_in_process("plot", f"run={run_dir}", f"out={out}", cwd=tmp_path)
    assert plotted.returncode == 0 and _image_size(out) == (800, 900)
    missing = cli_in_process("plot", f"run={tmp_path / 'nowhere'}", cwd=tmp_path)
    assert missing.returncode == 2 and "metrics.csv" in missing.stderr and "Traceback" not in missing.stderr
