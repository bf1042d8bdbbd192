"""`trainer=fsdp` (cmvl/training/fsdp.py): the config builds the block-sharded strategy, FSDP2 shards exactly the
blocks and keeps every parameter's name, a full state dict of the sharded model is the unsharded one (what a
consolidated checkpoint holds), and a one-process sharded run resumes from its checkpoint. The 2-process CPU run,
equal to one process and to DDP, is in tests/training/test_ddp.py (it shares that file's one-process run)."""

import pytest
import torch

from cmvl.config.compose import compose_config
from cmvl.errors import ConfigError
from cmvl.training.fsdp import BlockShardedStrategy, block_modules, shard_by_block
from cmvl.training.train import trainer_arguments as cmvl_trainer_arguments
from tests.conftest import TINY_TRAINING, TINY_WORLD, assert_one_line_error, cli_in_process, load_checkpoint_file

BLOCKS = tuple(compose_config(["trainer=fsdp"]).trainer.fsdp.blocks)
SIZES = [o for o in TINY_TRAINING if o.startswith(("model.", "vision.", "text."))]


def trainer_arguments(*overrides: str) -> dict:
    return cmvl_trainer_arguments(compose_config(list(overrides)))[0]


def test_trainer_fsdp_builds_the_block_sharded_strategy():
    arguments = trainer_arguments("trainer=fsdp", "trainer.fsdp.activation_checkpointing=true")
    strategy = arguments["strategy"]
    assert isinstance(strategy, BlockShardedStrategy) and "fsdp" not in arguments
    assert strategy.blocks == BLOCKS and strategy.activation_checkpointing and strategy.reshard_after_forward
    assert strategy.mixed_precision is None  # mixed_precision=auto follows trainer.precision (32-true)
    assert not strategy._save_distributed_checkpoint  # rank 0 writes one consolidated file
    assert trainer_arguments("trainer=fsdp", "trainer.precision=bf16-mixed")["strategy"].mixed_precision == "bf16"
    assert trainer_arguments("trainer=ddp")["strategy"] == "ddp"  # other trainers are left as they are


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("trainer.fsdp.mixed_precision=fp8", "trainer.fsdp.mixed_precision=fp8"),
        ("trainer.fsdp.blocks=BertLayer", "trainer.fsdp.blocks=BertLayer"),
        ("trainer.fsdp.activation_checkpointing=often", "trainer.fsdp.activation_checkpointing=often"),
    ],
)
def test_bad_fsdp_settings_are_one_line(tmp_path, override, needle):
    result = cli_in_process("train", "trainer=fsdp", "trainer.accelerator=cpu", override, cwd=tmp_path)
    assert_one_line_error(result, needle)


@pytest.fixture
def one_process_group(tmp_path):
    """A gloo process group of one process and its device mesh (FSDP2 shards over it: one shard holds all)."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        yield init_device_mesh("cpu", (1,))
    finally:
        dist.destroy_process_group()


def tiny_lit_module(task: str = "vqa"):
    from cmvl.training.build import build_datamodule, build_lit_module

    world = TINY_WORLD if task == "vqa" else [o for o in TINY_WORLD if not o.startswith("task.")]
    cfg = compose_config([*world, *SIZES, f"task={task}", "fusion=attention", "paths.output_dir=."])
    datamodule = build_datamodule(cfg)
    datamodule.prepare()
    torch.manual_seed(0)
    return build_lit_module(cfg, datamodule)


@pytest.mark.parametrize("activation_checkpointing", [False, True])
def test_fsdp_shards_the_blocks_and_keeps_every_name(tiny_world, one_process_group, activation_checkpointing):
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from torch.distributed.fsdp import FSDPModule

    lit = tiny_lit_module()
    reference = {k: v.clone() for k, v in lit.state_dict().items()}
    counts = shard_by_block(lit, one_process_group, blocks=BLOCKS, activation_checkpointing=activation_checkpointing)
    units = sorted(name for name, m in lit.named_modules() if isinstance(m, FSDPModule))
    # The text encoder's BERT layers and the fusion's cross-attention blocks, then the root (everything else).
    assert units == [
        "",
        "model.fusion.text_blocks.0",
        "model.fusion.text_blocks.1",
        "model.text.bert.encoder.layer.0",
        "model.text.bert.encoder.layer.1",
    ]
    assert dict(counts) == {"_CrossBlock": 2, "BertLayer": 2}
    full = get_model_state_dict(lit, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    assert full.keys() == reference.keys()  # no FSDP or checkpoint-wrapper prefix in any name
    for key, value in reference.items():
        assert torch.equal(full[key], value), key


def test_a_block_inside_a_block_is_not_a_unit_of_its_own():
    inner = torch.nn.Sequential(torch.nn.Linear(2, 2))
    outer = torch.nn.Sequential(torch.nn.ModuleList([inner]))
    model = torch.nn.ModuleDict({"a": outer, "b": torch.nn.Sequential(torch.nn.Linear(2, 2))})
    assert [name for name, _ in block_modules(model, ["Sequential"])] == ["a", "b"]
    assert block_modules(model, ["NoSuchBlock"]) == []


@pytest.fixture
def in_process_distributed():
    """Lightning leaves the process group it started (and its MASTER_* variables) to the process: gone after."""
    import os

    import torch.distributed as dist

    environment = dict(os.environ)
    yield
    if dist.is_initialized():
        dist.destroy_process_group()
    os.environ.clear()
    os.environ.update(environment)


def test_a_sharded_run_resumes_from_its_consolidated_checkpoint(tiny_world, tmp_path, in_process_distributed):
    """One process under trainer=fsdp (gloo): its checkpoint is an ordinary cmvl file (the unsharded names, a
    weights-only load), and `resume=auto` continues it through the strategy's loader to the next epoch."""
    run = tmp_path / "run"
    common = [*TINY_WORLD, *TINY_TRAINING, "trainer=fsdp", "trainer.accelerator=cpu", "trainer.devices=1"]
    common += ["trainer.limit_train_batches=1", "trainer.limit_val_batches=1", "trainer.enable_progress_bar=false"]
    common += [f"hydra.run.dir={run}"]
    first = cli_in_process("train", *common, "trainer.max_epochs=1", cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    saved = load_checkpoint_file(run / "checkpoints" / "last.ckpt")
    assert saved["global_step"] == 1 and all(k.startswith("model.") for k in saved["state_dict"])
    resumed = cli_in_process("train", *common, "trainer.max_epochs=2", "resume=auto", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stderr and "global step 1" in resumed.stderr
    final = load_checkpoint_file(run / "checkpoints" / "last.ckpt")
    assert final["global_step"] == 2
    assert any(not torch.equal(final["state_dict"][k], saved["state_dict"][k]) for k in saved["state_dict"])


# What torchrun sets in process 3 of `torchrun --nnodes=2 --nproc-per-node=2` (the second process of node 1).
TORCHRUN_ENV = {
    "RANK": "3",
    "LOCAL_RANK": "1",
    "GROUP_RANK": "1",
    "WORLD_SIZE": "4",
    "LOCAL_WORLD_SIZE": "2",
    "GROUP_WORLD_SIZE": "2",
    "MASTER_ADDR": "10.0.0.1",
    "MASTER_PORT": "29500",
    "TORCHELASTIC_RUN_ID": "cmvl-test",
}


@pytest.mark.parametrize("trainer", ["ddp", "fsdp"])
def test_under_torchrun_lightning_takes_the_ranks_from_its_variables(monkeypatch, trainer):
    import pytorch_lightning as pl
    from lightning_utilities.core.rank_zero import rank_zero_only
    from pytorch_lightning.plugins.environments import TorchElasticEnvironment

    from cmvl.training.torchrun import check_torchrun_world

    for key, value in TORCHRUN_ENV.items():
        monkeypatch.setenv(key, value)
    # The Trainer sets the process-wide rank_zero_only.rank to its global rank (3 here), which would silence every
    # later rank-zero log line, CSV row and progress bar of this test process: put back after the test.
    monkeypatch.setattr(rank_zero_only, "rank", rank_zero_only.rank)
    arguments = trainer_arguments(f"trainer={trainer}", "trainer.accelerator=cpu", "trainer.num_nodes=2")
    check_torchrun_world(arguments["devices"], arguments["num_nodes"])  # 2 × 2 = WORLD_SIZE: accepted
    built = pl.Trainer(**{k: v for k, v in arguments.items() if k != "requeue"}, logger=False)
    assert isinstance(built.strategy.cluster_environment, TorchElasticEnvironment)
    assert (built.global_rank, built.local_rank, built.node_rank, built.world_size) == (3, 1, 1, 4)
    assert built.strategy.cluster_environment.creates_processes_externally  # Lightning starts no processes
    with pytest.raises(ConfigError, match=r"torchrun started 4 processes, 2 per node; give trainer.devices=2 "):
        check_torchrun_world(2, 1)  # trainer.num_nodes left at 1
    with pytest.raises(ConfigError, match="trainer.num_nodes=2"):
        check_torchrun_world(4, 1)


def test_outside_torchrun_nothing_is_checked(monkeypatch):
    from cmvl.training.torchrun import check_torchrun_world

    for key in TORCHRUN_ENV:
        monkeypatch.delenv(key, raising=False)
    check_torchrun_world(8, 3)
