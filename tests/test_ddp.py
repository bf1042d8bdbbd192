"""A 2-process DDP run on CPU (gloo) through the real CLI: ranks > 0 are relaunched by Lightning from sys.argv.

The run trains every task at once (multitask: VQA, captioning, grounding, retrieval, tagging), which covers heads
that only some steps train, the contrastive loss over embeddings gathered from both ranks, and metrics gathered
across ranks."""

import json

from tests.conftest import TINY_TRAINING, TINY_WORLD, run_cli
from tests.test_multitask import ALL_TASKS


def test_two_process_cpu_ddp_train(tmp_path, cache_dir):
    run_dir = tmp_path / "ddp"
    result = run_cli(
        "train",
        *[a.replace("task.", "task.tasks.vqa.") for a in TINY_WORLD],
        *TINY_TRAINING,
        *ALL_TASKS,
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=5",
        f"hydra.run.dir={run_dir}",
        cwd=tmp_path,
        timeout=400,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["global_step"] == 5
    assert (run_dir / "checkpoints" / "best.ckpt").exists()
    assert "Initializing distributed: GLOBAL_RANK: 1, MEMBER: 2/2" in result.stderr + result.stdout
