"""A 2-process DDP run on CPU (gloo) through the real CLI: ranks > 0 are relaunched by Lightning from sys.argv."""

import json

from tests.conftest import run_cli
from tests.test_cli_end_to_end import TRAIN_FAST


def test_two_process_cpu_ddp_train(tmp_path, cache_dir):
    run_dir = tmp_path / "ddp"
    result = run_cli(
        "train",
        *TRAIN_FAST,
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
