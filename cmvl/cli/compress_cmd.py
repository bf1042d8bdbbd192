"""`cmvl compress ckpt=PATH method=int8_dynamic|int8_weight_only|int8_static|prune out=DIR`."""

from __future__ import annotations

from cmvl.cli.args import Option, Spec, choice, integer, parse, path, positive_float, wants_help

METHODS = ("int8_dynamic", "int8_weight_only", "int8_static", "prune")  # = cmvl.models.compression.METHODS
PRUNE_KINDS = ("structured", "unstructured")


def batch_sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(part) for part in text.strip("[]").split(",") if part.strip())
    except ValueError:
        raise ValueError("must be batch sizes, e.g. [1,32]") from None
    if not sizes or min(sizes) < 1:
        raise ValueError("must be batch sizes >= 1, e.g. [1,32]")
    return sizes


COMPRESS = Spec(
    "compress",
    """Compresses a checkpoint's model and measures it beside the original in one run (validation metric,
absolute drop, file size, latency at each batch size, threads, torch version): report.md + report.json in out=DIR.
int8_dynamic / int8_weight_only: torchao int8 linear layers, written as model.ckpt (read with weights_only=True;
cmvl eval and cmvl.load_run accept it). int8_static: ONNX Runtime's static quantiser (calibrated on training
batches), written as model.onnx with cmvl_export.json. prune: magnitude pruning; structured removes attention heads
and feed-forward channels (a smaller model.ckpt), unstructured zeroes single weights.""",
    (
        Option("ckpt", "the checkpoint to compress", path, metavar="PATH"),
        Option("method", "how to compress", choice(METHODS), metavar="|".join(METHODS)),
        Option("out", "a new (or empty) folder for the model and the report", path, metavar="DIR"),
        Option("prune.kind", "method=prune: what is removed", choice(PRUNE_KINDS), "structured", "|".join(PRUNE_KINDS)),
        Option("prune.amount", "method=prune: share of heads/channels (or weights) removed", positive_float, 0.3, "X"),
        Option("prune.finetune_epochs", "method=prune: epochs of fine-tuning after pruning", integer(0), 0, "N"),
        Option(
            "prune.finetune_batches", "method=prune: at most N batches per fine-tuning epoch", integer(1), None, "N"
        ),
        Option(
            "prune.finetune_lr",
            "method=prune: fine-tuning learning rate (default: the run's last, optim lr x min_lr_ratio)",
            positive_float,
            None,
            "X",
        ),
        Option("calibration_batches", "method=int8_static: training batches for calibration", integer(1), 32, "N"),
        Option("batch_sizes", "latency is measured at these batch sizes", batch_sizes, "[1,32]", "[B,...]"),
        Option("repeats", "timed calls per latency measurement", integer(1), 20, "N"),
    ),
)


def compress_command(args: list[str]) -> None:
    if wants_help(args):
        print(COMPRESS.help())
        return
    parsed = parse(COMPRESS, args)
    from cmvl.config.writable import check_writable_dir

    check_writable_dir(parsed["out"], "cmvl compress out=")
    from cmvl.compress.run_compression import CompressSettings, compress_checkpoint

    sizes = parsed["batch_sizes"]
    settings = CompressSettings(
        method=parsed["method"],
        prune_kind=parsed["prune.kind"],
        prune_amount=parsed["prune.amount"],
        finetune_epochs=parsed["prune.finetune_epochs"],
        finetune_batches=parsed["prune.finetune_batches"],
        finetune_lr=parsed["prune.finetune_lr"],
        calibration_batches=parsed["calibration_batches"],
        batch_sizes=batch_sizes(sizes) if isinstance(sizes, str) else sizes,
        repeats=parsed["repeats"],
    )
    report = compress_checkpoint(parsed["ckpt"], parsed["out"], settings)
    metric, change = report["metric"], report["change"]
    before, after = report["original"]["metrics"][metric], report["compressed"]["metrics"][metric]
    print(f"{report['split']} {metric}: {before:.4f} -> {after:.4f} (absolute drop {change['absolute_drop']:+.4f})")
    print(f"size: {report['original']['size_mb']:.3f} MB -> {report['compressed']['size_mb']:.3f} MB")
    for b, ratio in change["latency_ratio"].items():
        print(f"latency batch {b}: x{ratio:.2f} of the original")
    print(f"compressed model: {parsed['out'] / report['compressed_file']}; report: {parsed['out'] / 'report.md'}")
