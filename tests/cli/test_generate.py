"""`cmvl generate`: a task=generation checkpoint draws n images per prompt into one PNG grid, the same for a seed;
bad input (empty or unknown-word prompts, n=0, an unwritable out=, another task's checkpoint) is one line and
writes nothing."""

from __future__ import annotations

import pytest
from PIL import Image

from cmvl.cli.generate_cmd import CELL, LABEL_HEIGHT
from cmvl.config.compose import compose_config
from cmvl.training.train import run_training
from tests.conftest import TINY_TRAINING, TINY_WORLD_ANY_TASK, assert_one_line_error, cli_in_process

PROMPT = "a red circle left of a blue square"


@pytest.fixture(scope="module")
def checkpoint(tiny_world, tmp_path_factory):
    """One epoch of a tiny CVAE run (in this process: no new interpreter), its best checkpoint."""
    out = tmp_path_factory.mktemp("generation-run")
    cfg = compose_config(
        [*TINY_WORLD_ANY_TASK, *TINY_TRAINING, "task=generation", "generator.channels=8", "trainer.max_epochs=1",
         "logger=none", "samples.count=0", f"paths.output_dir={out}"]
    )  # fmt: skip
    run_training(cfg)
    return out / "checkpoints" / "best.ckpt"


def _generate(tmp_path, *args: str):
    return cli_in_process("generate", *args, cwd=tmp_path)


def test_a_prompt_gives_a_grid_of_n_images_the_same_for_a_seed(checkpoint, tmp_path):
    first, again, other = tmp_path / "a.png", tmp_path / "b.png", tmp_path / "c.png"
    for out, seed in ((first, 0), (again, 0), (other, 1)):
        result = _generate(tmp_path, f"ckpt={checkpoint}", f"prompt={PROMPT}", "n=4", f"seed={seed}", f"out={out}")
        assert result.returncode == 0, result.stderr[-3000:]
    assert "4 images (1 prompt × 4)" in result.stdout and "sampling prompt 1/1" in result.stderr
    assert Image.open(first).size == (2 * CELL, 2 * CELL + LABEL_HEIGHT)  # a 2×2 square under the prompt
    assert first.read_bytes() == again.read_bytes() and first.read_bytes() != other.read_bytes()


def test_a_prompts_file_gives_one_row_per_prompt(checkpoint, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\n\n  a blue square  \n")
    out = tmp_path / "rows" / "grid.png"  # a folder that does not exist yet is created
    result = _generate(tmp_path, f"ckpt={checkpoint}", f"prompts={prompts}", "n=3", f"out={out}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert Image.open(out).size == (3 * CELL, 2 * (CELL + LABEL_HEIGHT))


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["prompt="], "prompt= is empty"),
        (["prompt=日本語 ⊕⊗"], "knows none of the words"),
        ([f"prompt={PROMPT}", "n=0"], "n=0: must be an integer in [1, 1024]"),
        ([], "give prompt=TEXT or prompts=FILE"),
        ([f"prompt={PROMPT}", "out=/proc/grid.png"], "not writable"),
        ([f"prompt={PROMPT}", "out=grid.jpg"], "must be a .png file"),
    ],
    ids=["empty", "unknown-words", "n=0", "no-prompt", "unwritable", "not-png"],
)
def test_bad_input_is_one_line_and_writes_nothing(checkpoint, tmp_path, args, needle):
    result = _generate(tmp_path, f"ckpt={checkpoint}", *args)
    assert_one_line_error(result, needle)
    assert not any(tmp_path.iterdir())


def test_a_checkpoint_of_another_task_is_one_line(finished_tiny_run, tmp_path):
    ckpt = finished_tiny_run / "checkpoints" / "best.ckpt"
    result = _generate(tmp_path, f"ckpt={ckpt}", f"prompt={PROMPT}", f"out={tmp_path / 'g.png'}")
    assert_one_line_error(result, "task=vqa", "task=generation")
    assert not any(tmp_path.iterdir())
