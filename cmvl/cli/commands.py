"""The table of cmvl's commands: `cmvl --help`, the dispatch and the unknown-command line are all built from it.

A new command is one row here and one function `name(args: list[str]) -> None` in a module of `cmvl/cli/` (its
keys declared in an `args.Spec`, unless it takes Hydra overrides like `train`).
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable
from dataclasses import dataclass

from cmvl.cli.args import QUOTING_RULE
from cmvl.errors import UserError


@dataclass(frozen=True)
class Command:
    name: str  # one word, or "group word" (`data shapes`)
    target: str  # "module:function", imported only when the command runs
    usage: str  # the arguments, as `cmvl --help` shows them
    summary: str  # one line

    def load(self) -> Callable[[list[str]], None]:
        module, _, function = self.target.partition(":")
        return getattr(importlib.import_module(module), function)


COMMANDS: tuple[Command, ...] = (
    Command(
        "train",
        "cmvl.cli.train_cmd:train_command",
        "[-m] [key=value ...]",
        "train a model (Hydra overrides; -m runs a sweep; --help lists the config groups)",
    ),
    Command(
        "eval",
        "cmvl.cli.eval_cmd:eval_command",
        "ckpt=PATH [out=DIR] [key=value ...]",
        "evaluate a checkpoint: metrics.json + predictions in the official format",
    ),
    Command(
        "generate",
        "cmvl.cli.generate_cmd:generate_command",
        "ckpt=PATH prompt=TEXT|prompts=FILE [n=16] [seed=0] [out=PNG]",
        "images drawn from text by a task=generation checkpoint, as one PNG grid",
    ),
    Command(
        "explain",
        "cmvl.cli.explain_cmd:explain_command",
        "ckpt=PATH image=FILE question=TEXT out=DIR [method=gradcam]",
        "maps of what the model looked at: a PNG per word and for the question, maps.npy",
    ),
    Command(
        "index",
        "cmvl.cli.index_cmd:index_command",
        "ckpt=PATH images=DIR out=DIR [batch_size=N]",
        "embed a folder of images with a retrieval checkpoint, for cmvl search (resumable)",
    ),
    Command(
        "search",
        "cmvl.cli.search_cmd:search_command",
        'index=DIR query=TEXT [top_k=K] | image=PATH texts=FILE',
        "images of an index matching a text, or a file's lines matching an image",
    ),
    Command(
        "predict",
        "cmvl.cli.predict_cmd:predict_command",
        "ckpt=PATH image=FILE|input=JSONL|images=DIR [question=TEXT] [key=value ...]",
        "a trained model on your own images: answers, captions, tags, boxes",
    ),
    Command(
        "serve",
        "cmvl.cli.serve_cmd:serve_command",
        "ckpt=PATH|export=DIR [host=127.0.0.1] [port=8000] [key=value ...]",
        "an HTTP API answering what predict answers: batched, bounded, /metrics",
    ),
    Command(
        "data shapes",
        "cmvl.cli.data_cmd:shapes_command",
        "out=DIR [images=N] [seed=S] [size=PX]",
        "write the built-in shapes world (VQA v2, COCO, Visual Genome layouts)",
    ),
    Command(
        "data info",
        "cmvl.cli.data_cmd:info_command",
        "[key=value ...]",
        "rows, images and answer types of every split a dataset config reads",
    ),
    Command(
        "data prepare",
        "cmvl.cli.data_cmd:prepare_command",
        "out=DIR [size=PX] [key=value ...]",
        "write a resized copy of a dataset's images (then train with dataset.images=DIR)",
    ),
    Command(
        "data shards",
        "cmvl.cli.data_cmd:shards_command",
        "out=DIR [shard_size=N] [key=value ...]",
        "write a captions dataset as image-text tar shards (for dataset=webdataset)",
    ),
    Command(
        "sweep report",
        "cmvl.cli.sweep_cmd:report_command",
        "dir=DIR",
        "table (best first), reproduce line, report.csv and plots of a sweep directory",
    ),
    Command(
        "plot",
        "cmvl.cli.plot_cmd:plot_command",
        "run=DIR [out=PNG]",
        "training curves (loss, validation metrics, learning rate) of a run as a PNG",
    ),
    Command(
        "export",
        "cmvl.cli.export_cmd:export_command",
        "ckpt=PATH format=onnx|torch_export|safetensors out=DIR",
        "an ONNX / torch.export / safetensors model, parity-checked, with cmvl_export.json",
    ),
    Command(
        "compress",
        "cmvl.cli.compress_cmd:compress_command",
        "ckpt=PATH method=int8_dynamic|int8_weight_only|int8_static|prune out=DIR",
        "int8 or pruned model with a side-by-side report (accuracy, size, latency)",
    ),
)
_BY_NAME = {c.name: c for c in COMMANDS}
assert len(_BY_NAME) == len(COMMANDS), "a command named twice"


def command(name: str) -> Command:
    return _BY_NAME[name]


def _table(commands: tuple[Command, ...] | list[Command]) -> str:
    lines = []
    width = 34
    for c in commands:
        head = f"  {c.name} {c.usage}"
        lines.append(f"{head:<{width}}{c.summary}" if len(head) < width else f"{head}\n{'':<{width}}{c.summary}")
    return "\n".join(lines)


def usage() -> str:
    """`cmvl --help`."""
    return (
        f"usage: cmvl <command> [key=value ...]\n\ncommands:\n{_table(COMMANDS)}\n\n{QUOTING_RULE}\n"
        "Every command takes verbosity=quiet|info|debug. Run `cmvl <command> --help` for a command's keys."
    )


def group_usage(group: str) -> str:
    """`cmvl data --help`: the commands of one group."""
    members = [c for c in COMMANDS if c.name.startswith(group + " ")]
    return f"usage: cmvl {group} <{'|'.join(c.name.split()[1] for c in members)}> [key=value ...]\n\n{_table(members)}"


def groups() -> list[str]:
    return list(dict.fromkeys(c.name.split()[0] for c in COMMANDS if " " in c.name))


def find(args: list[str]) -> tuple[Command | None, list[str]]:
    """The command `args` start with and the rest of them; (None, []) for `cmvl <group> [--help]` (print the
    group's usage). Raises `UserError` for an unknown command, with the nearest names."""
    if len(args) >= 2 and f"{args[0]} {args[1]}" in _BY_NAME:
        return _BY_NAME[f"{args[0]} {args[1]}"], args[2:]
    if args[0] in _BY_NAME:
        return _BY_NAME[args[0]], args[1:]
    if args[0] in groups():
        members = [c.name.split()[1] for c in COMMANDS if c.name.startswith(args[0] + " ")]
        if len(args) == 1:
            raise UserError(f"cmvl {args[0]} needs one of: {', '.join(members)} (see cmvl {args[0]} --help)")
        if args[1] in ("-h", "--help", "help"):
            return None, []
        close = difflib.get_close_matches(args[1], members, n=1)
        hint = f"; did you mean '{args[0]} {close[0]}'?" if close else ""
        raise UserError(f"unknown command '{args[0]} {args[1]}' ({args[0]} commands: {', '.join(members)}){hint}")
    words = list(dict.fromkeys(c.name.split()[0] for c in COMMANDS))
    close = difflib.get_close_matches(args[0], words, n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    raise UserError(f"unknown command '{args[0]}' (commands: {', '.join(words)}){hint}")
