"""`cmvl` command-line dispatcher: train, eval, data, sweep, plot."""

from __future__ import annotations

import sys

from cmvl.errors import UserError, one_line

USAGE = """usage: cmvl <command> [args]

commands:
  train [-m] [key=value ...]    train a model (Hydra overrides; -m runs a sweep). `cmvl train --help` lists the
                                config groups and their choices.
  eval ckpt=PATH [key=value]    evaluate a checkpoint: metrics.json + predictions in the official format
  data shapes --out DIR         write the built-in shapes world (VQA v2, COCO, Visual Genome layouts)
  data info [key=value ...]     rows, images and answer types of every split a dataset config reads
  data prepare --out DIR        write a resized copy of a dataset's images (then train with dataset.images=DIR)
  sweep report DIR              table (best first), reproduce line, report.csv and plots of a sweep directory
  plot RUN_DIR                  training curves (loss, validation metrics, learning rate) of a run as a PNG

Run `cmvl <command> --help` for a command's options."""


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(USAGE)
        return
    command, rest = args[0], args[1:]
    try:
        if command == "train":
            from cmvl.cli.train_cmd import train_command

            train_command(rest)
        elif command == "eval":
            from cmvl.cli.eval_cmd import eval_command

            eval_command(rest)
        elif command == "data":
            from cmvl.cli.data_cmd import data_command

            data_command(rest)
        elif command == "sweep":
            from cmvl.cli.sweep_cmd import sweep_command

            sweep_command(rest)
        elif command == "plot":
            from cmvl.cli.plot_cmd import plot_command

            plot_command(rest)
        else:
            raise UserError(f"unknown command '{command}' (commands: train, eval, data, sweep, plot)")
    except UserError as err:
        print(f"cmvl: error: {one_line(err)}", file=sys.stderr)
        sys.exit(err.exit_code)
    except KeyboardInterrupt:
        print("cmvl: interrupted", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
