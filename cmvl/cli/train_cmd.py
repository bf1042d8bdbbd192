"""`cmvl train`: validate the overrides, then hand a plain Hydra command line to the training job."""

from __future__ import annotations

import sys

from cmvl.config.paths import config_groups

HELP = """usage: cmvl train [-m] [key=value ...]

Trains a model; every key=value is a Hydra override of conf/train.yaml. -m (--multirun) sweeps over
comma-separated values, e.g. `cmvl train -m fusion=concat,attention seed=0,1`.

config groups (group=choice):
{groups}

examples:
  cmvl train                                   VQA on the built-in shapes world
  cmvl train fusion=concat trainer.max_epochs=3 model.dim=64
  cmvl train trainer=debug                     a few batches, to check a setup
  cmvl train -m fusion=concat,attention        a sweep; prints a summary table at the end

`cmvl train --cfg job` prints the composed config; `cmvl train --hydra-help` shows Hydra's own flags."""


def train_command(args: list[str]) -> None:
    if any(a in ("-h", "--help") for a in args):
        groups = "\n".join(f"  {g:<10} {', '.join(c)}" for g, c in config_groups().items())
        print(HELP.format(groups=groups))
        return
    overrides = [a for a in args if not a.startswith("-")]
    from cmvl.config.preflight import preflight

    preflight(overrides)

    import __main__
    from cmvl.cli import train_job

    # DDP ranks > 0 re-run sys.argv: make that this job file with plain overrides (see train_job's docstring).
    # Under `python -m cmvl`, Lightning would re-run the module instead; clearing its spec makes it use argv[0].
    sys.argv = [train_job.__file__, *args]
    __main__.__spec__ = None
    train_job.main()
