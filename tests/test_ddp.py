"""A 2-process DDP run on CPU (gloo) through the real CLI: ranks > 0 are relaunched by Lightning from sys.argv.

`multitask` (VQA + captioning + grounding) covers the default VQA task, heads that only some steps train and
caption metrics gathered across ranks; `retrieval` covers the contrastive loss over embeddings gathered from both
ranks and Recall@K over the gathered split."""

import json

import pytest

from tests.conftest import TINY_TRAINING, TINY_WORLD, run_cli

TASK_OVERRIDES = {
    "multitask": [a.replace("task.", "task.tasks.vqa.") for a in TINY_WORLD if a.startswith("task.")],
    "retrieval": [],
}


@pytest.mark.parametrize("task", list(TASK_OVERRIDES))
def test_two_process_cpu_ddp_train(task, tmp_path, cache_dir):
    run_dir = tmp_path / "ddp"
    result = run_cli(
        "train",
        *[a for a in TINY_WORLD if not a.startswith("task.")],
        *TINY_TRAINING,
        f"task={task}",
        *TASK_OVERRIDES[task],
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=2",
        f"hydra.run.dir={run_dir}",
        cwd=tmp_path,
        timeout=400,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["global_step"] == 2
    assert (run_dir / "checkpoints" / "best.ckpt").exists()
    assert "Initializing distributed: GLOBAL_RANK: 1, MEMBER: 2/2" in result.stderr + result.stdout
