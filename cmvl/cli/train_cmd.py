"""`cmvl train`: validate the overrides, then hand a plain Hydra command line to the training job."""

from __future__ import annotations

import shlex
import sys

from cmvl.cli.args import HYDRA_QUOTING_RULE
from cmvl.config.paths import config_groups
from cmvl.log import configure, get_logger, verbosity_of

log = get_logger(__name__)

HELP = """usage: cmvl train [-m] [key=value ...]

Trains a model; every key=value is a Hydra override of cmvl/conf/train.yaml. -m (--multirun) sweeps over
comma-separated values, e.g. `cmvl train -m fusion=concat,attention seed=0,1`.

config groups (group=choice):
{groups}

examples:
  cmvl train                                   VQA on the built-in shapes world
  cmvl train fusion=concat trainer.max_epochs=3 model.dim=64
  cmvl train trainer=debug                     a few batches, to check a setup
  cmvl train -m fusion=concat,attention        a grid sweep; prints the sweep report at the end
  cmvl train hparams_search=vqa_optuna         an Optuna search (cmvl/conf/hparams_search/); `cmvl sweep report dir=DIR`

verbosity=quiet|info|debug sets how much cmvl says on stderr (quiet: warnings and errors only; debug: also the
third-party lines cmvl filters out).

A sweep's directory is multirun/<its overrides>, each job's is named by the job's overrides: re-running the same
command skips finished jobs and resumes unfinished ones (set hydra.sweep.dir=DIR to choose the directory).

`cmvl train --cfg job` prints the composed config; `cmvl train --hydra-help` shows Hydra's own flags.

{quoting}"""


def is_sweep(args: list[str]) -> bool:
    """`-m`/`--multirun`, or a search space (cmvl/conf/hparams_search/*, which switch Hydra to multirun)."""
    return any(a in ("-m", "--multirun") or a.lstrip("+").startswith("hparams_search=") for a in args)


def sweep_naming_overrides(overrides: list[str]) -> list[str]:
    """Hydra overrides that name the sweep directory after the command (unless the user chose one) and each job
    directory after the job's own values: the overrides every job shares are left out of job names."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from cmvl.config.overrides import user_overrides
    from cmvl.sweeps.naming import JOB_NAME_EXCLUDED, sweep_dir_for

    parsed = OverridesParser.create().parse_overrides(user_overrides(overrides))
    swept = {o.key_or_group for o in parsed if o.is_sweep_override()}
    shared = [o.key_or_group for o in parsed if o.key_or_group not in swept]
    excluded = ",".join(dict.fromkeys([*JOB_NAME_EXCLUDED, *shared]))
    extra = [f"hydra.job.config.override_dirname.exclude_keys=[{excluded}]"]
    if not any(o.startswith("hydra.sweep.dir=") for o in overrides):
        sweep_dir = sweep_dir_for(overrides)
        log.info(f"sweep directory {sweep_dir} (re-run this command to continue it)")
        extra.append(f"hydra.sweep.dir='{sweep_dir}'")
    return extra


# Hydra's flags that take the next argument as their value (`--cfg job`, `-p trainer`); `--cfg=job` is one argument.
HYDRA_VALUE_FLAGS = (
    "--cfg",
    "-c",
    "--package",
    "-p",
    "--config-path",
    "-cp",
    "--config-name",
    "-cn",
    "--config-dir",
    "-cd",
)


def _overrides_of(args: list[str]) -> list[str]:
    """The key=value overrides of a `cmvl train` command line: Hydra's flags and their values left out."""
    overrides, skip_next = [], False
    for arg in args:
        if skip_next:
            skip_next = False
        elif arg in HYDRA_VALUE_FLAGS:
            skip_next = True
        elif not arg.startswith("-"):
            overrides.append(arg)
    return overrides


# Every flag of Hydra's command line (`--hydra-help` lists them); anything else that starts with '-' is refused here
# (Hydra's argparse would print its usage and a line that names train_job.py instead).
HYDRA_FLAGS = (
    *HYDRA_VALUE_FLAGS,
    *("-h", "--help", "--hydra-help", "--version", "--resolve", "-r", "--run", "-m", "--multirun"),
    *("-i", "--info", "-sc", "--shell-completion", "--experimental-rerun"),
)


def _check_flags(args: list[str]) -> None:
    from cmvl.errors import ConfigError

    unknown = next((a for a in args if a.startswith("-") and a.split("=")[0] not in HYDRA_FLAGS), None)
    if unknown is not None:
        raise ConfigError(
            f"train: unknown flag {unknown}: cmvl train takes key=value overrides (a key is never written with '-' "
            "in front) and Hydra's flags (-m, --cfg job, --info …; see cmvl train --hydra-help)"
        )


def _check_flag_combination(args: list[str]) -> None:
    """Hydra runs one of --cfg / --info / -m (multirun) and raises a traceback for two of them."""
    from cmvl.errors import ConfigError

    shown = [a.split("=")[0] for a in args if a.split("=")[0] in ("--cfg", "-c", "--info", "-i")]
    if shown and is_sweep(args):
        raise ConfigError(
            f"{shown[0]} prints one composed config and a sweep (-m or hparams_search) composes many: leave -m out "
            "and give each key one value to see a job's config"
        )


def train_command(args: list[str]) -> None:
    if any(a in ("-h", "--help") for a in args):
        groups = "\n".join(f"  {g:<10} {', '.join(c)}" for g, c in config_groups().items())
        print(HELP.format(groups=groups, quoting=HYDRA_QUOTING_RULE))
        return
    overrides = _overrides_of(args)
    _check_flags(args)
    _check_flag_combination(args)
    from cmvl.config.preflight import preflight

    preflight(overrides)
    configure(verbosity_of(overrides))
    if is_sweep(args):
        args = [*args, *sweep_naming_overrides(overrides)]
    else:
        from cmvl.training.slurm import continuation_overrides

        args = [*args, *continuation_overrides(overrides)]  # a requeued SLURM job continues its run

    import __main__
    from cmvl.cli import train_job

    # DDP ranks > 0 re-run sys.argv: make that this job file with plain overrides (see train_job's docstring).
    # Under `python -m cmvl`, Lightning would re-run the module instead; clearing its spec makes it use argv[0].
    sys.argv = [train_job.__file__, *args]
    log.debug(f"training job: {shlex.join(sys.argv)}")  # what DDP ranks > 0 re-run, too
    __main__.__spec__ = None
    train_job.main()
