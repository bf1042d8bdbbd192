"""A 2-process DDP run on CPU (gloo) through the real CLI, as a job of a sweep: ranks > 0 are relaunched by Lightning
from sys.argv, which the job points at a single run of its own configuration in its own directory (not the sweep).

The run trains every task at once (multitask: VQA, captioning, grounding, retrieval, tagging), which covers heads
that only some steps train, the contrastive loss over embeddings gathered from both ranks, and metrics gathered
across ranks."""

import json

from tests.conftest import TINY_TRAINING, TINY_WORLD, run_cli
from tests.test_multitask import ALL_TASKS


def test_two_process_cpu_ddp_train_as_a_sweep_job(tmp_path, cache_dir):
    sweep_dir = tmp_path / "sweep"
    result = run_cli(
        "train",
        "-m",
        *[a.replace("task.", "task.tasks.vqa.") for a in TINY_WORLD],
        *TINY_TRAINING,
        *ALL_TASKS,
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=5",
        f"hydra.sweep.dir={sweep_dir}",
        cwd=tmp_path,
        timeout=400,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    run_dir = sweep_dir / "defaults"  # the only job: every override is shared, none names it
    assert [p.name for p in sweep_dir.iterdir() if p.is_dir()] == ["defaults"]  # no stray rank directories
    assert (sweep_dir / "report.txt").exists()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["global_step"] == 5
    assert (run_dir / "checkpoints" / "best.ckpt").exists()
    assert "Initializing distributed: GLOBAL_RANK: 1, MEMBER: 2/2" in result.stderr + result.stdout
