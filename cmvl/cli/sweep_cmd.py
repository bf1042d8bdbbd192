"""`cmvl sweep report dir=DIR`: the report of a multirun directory (also written automatically when a sweep ends)."""

from __future__ import annotations

from cmvl.cli.args import Option, Spec, parse, path, wants_help
from cmvl.errors import UserError

REPORT = Spec(
    "sweep report",
    """Reads every job directory of the sweep DIR (multirun/...) and prints one table sorted by the optimised metric
(optimized_metric, else the checkpoint metric): the swept parameters, the metric at the best epoch, epochs, wall
time and status (done | unfinished: re-running the sweep command resumes it | failed), then the override line
that reproduces the best job. Writes DIR/report.txt, DIR/report.csv and DIR/plots/*.png (the metric against each
swept parameter; history.png, the optimisation history, for an Optuna search).""",
    (Option("dir", "the sweep directory (multirun/<its overrides>)", path, metavar="DIR"),),
    positional="dir",
)


def report_command(args: list[str]) -> None:
    if wants_help(args):
        print(REPORT.help())
        return
    sweep_dir = parse(REPORT, args)["dir"]
    if not sweep_dir.is_dir():
        raise UserError(f"{sweep_dir}: no such sweep directory")
    from cmvl.sweeps.report import write_report

    report, text = write_report(sweep_dir)
    if not report.jobs:
        raise UserError(f"{sweep_dir}: no sweep jobs in it (job directories hold .hydra/overrides.yaml)")
    print(text)
    print(f"report: {sweep_dir}/report.txt, report.csv, plots/")
