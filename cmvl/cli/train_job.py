"""The Hydra entry point of one training job.

`cmvl train k=v ...` re-points `sys.argv` at this file before calling `main()`. Lightning's DDP launcher starts
ranks > 0 by re-running `sys.argv` (DESIGN.md, "DDP relaunch"), so they run this file with plain Hydra
overrides, never the `cmvl` dispatcher and its sub-command.
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from cmvl.config.paths import CONF_DIR
from cmvl.errors import UserError, one_line
from cmvl.sweeps.naming import register_resolvers

register_resolvers()


@hydra.main(config_path=str(CONF_DIR), config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    """Trains one run; returns `optimized_metric` at the best checkpoint's epoch (what a sweeper optimises)."""
    from cmvl.training.train import run_training

    try:
        summary = run_training(cfg)
    except UserError as err:
        print(f"cmvl: error: {one_line(err)}", file=sys.stderr)
        sys.exit(err.exit_code)
    return summary.get("optimized_value")


if __name__ == "__main__":
    main()
