"""The Hydra entry point of one training job.

`cmvl train k=v ...` re-points `sys.argv` at this file before calling `main()`. Lightning's DDP launcher starts
ranks > 0 by re-running `sys.argv` (DESIGN.md, "DDP relaunch"), so they run this file with plain Hydra
overrides, never the `cmvl` dispatcher and its sub-command.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from cmvl.config.paths import CONF_DIR, register_config_searchpath
from cmvl.config.resolvers import register_resolvers
from cmvl.errors import UserError, one_line
from cmvl.log import DEFAULT_VERBOSITY, configure, log, verbosity_of

register_resolvers()
register_config_searchpath()  # $CMVL_CONFIG_DIR's choices (hydra.searchpath in cmvl/conf/train.yaml)


@hydra.main(config_path=str(CONF_DIR), config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    """Trains one run; returns `optimized_metric` at the best checkpoint's epoch (what a sweeper optimises)."""
    from cmvl.distill import load_teacher
    from cmvl.sweeps.jobs import sweeper_value
    from cmvl.training.checkpoints import state_dict_errors
    from cmvl.training.train import run_training

    configure(cfg.get("verbosity", DEFAULT_VERBOSITY))
    try:
        with state_dict_errors(lambda: resumed_checkpoint(cfg)):
            summary = run_training(cfg, load_teacher=load_teacher)
    except UserError as err:
        log.error(one_line(err))
        sys.exit(err.exit_code)
    return sweeper_value(summary, Path(cfg.paths.output_dir))


def resumed_checkpoint(cfg: DictConfig) -> Path | None:
    """The checkpoint this run resumed from (found again: asked only when its weights did not fit the model)."""
    from cmvl.sweeps.jobs import resume_mode
    from cmvl.training.resume import find_resume_checkpoint

    return find_resume_checkpoint(resume_mode(cfg.resume), Path(cfg.checkpoint.dirpath))[0]


if __name__ == "__main__":  # a DDP rank > 0 (see above): its messages before the config is composed, too
    configure(verbosity_of(sys.argv[1:]))
    main()
