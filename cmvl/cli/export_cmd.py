"""`cmvl export ckpt=PATH format=onnx|torch_export|safetensors out=DIR`."""

from __future__ import annotations

from cmvl.cli.args import Option, Spec, choice, integer, parse, path, positive_float, wants_help

FORMATS = ("onnx", "torch_export", "safetensors")  # = cmvl.export.FORMATS (not imported: --help stays torch-free)
EXPORTERS = ("dynamo", "torchscript")


EXPORT = Spec(
    "export",
    """Writes a checkpoint's model for use without cmvl: an ONNX model (ONNX Runtime), a torch.export program (.pt2)
or safetensors weights with the run's config (cmvl.load_run reads the .safetensors file like a checkpoint), plus
cmvl_export.json (inputs, outputs, image size and resize rule, mean/std, tokenizer.json, labels; docs/export.md).
Images enter as uint8 and are normalised inside the graph; batch and text length are dynamic. The exported model
is checked against PyTorch on validation batches: a difference above tolerance= writes nothing.""",
    (
        Option("ckpt", "the checkpoint to export", path, metavar="PATH"),
        Option("format", "what to write", choice(FORMATS), metavar="|".join(FORMATS)),
        Option("out", "a new (or empty) folder for the model and cmvl_export.json", path, metavar="DIR"),
        Option("parity_batches", "validation batches the parity check runs", integer(1), 2, "N"),
        Option("tolerance", "largest max |exported - PyTorch| accepted per output", positive_float, 1e-4, "X"),
        Option(
            "exporter",
            "ONNX exporter: torch.onnx dynamo, or the older TorchScript one",
            choice(EXPORTERS),
            "dynamo",
            "|".join(EXPORTERS),
        ),  # fmt: skip
        Option("opset", "ONNX opset version", integer(17, 23), 18, "N"),
    ),
)


def export_command(args: list[str]) -> None:
    if wants_help(args):
        print(EXPORT.help())
        return
    parsed = parse(EXPORT, args)
    from cmvl.config.writable import check_writable_dir

    check_writable_dir(parsed["out"], "cmvl export out=")
    import torch

    from cmvl.export import export_run
    from cmvl.run import restore_run, run_config
    from cmvl.training.checkpoints import load_checkpoint

    checkpoint = load_checkpoint(parsed["ckpt"])
    run = restore_run(parsed["ckpt"], checkpoint, run_config(checkpoint, []), device=torch.device("cpu"))
    manifest = export_run(
        run,
        checkpoint,
        parsed["format"],
        parsed["out"],
        parity_batches=parsed["parity_batches"],
        tolerance=parsed["tolerance"],
        exporter=parsed["exporter"],
        opset=parsed["opset"],
    )
    parity = manifest["parity"]
    worst = ", ".join(f"{k} {v:.2e}" for k, v in parity["max_abs_diff"].items())
    models = [parsed["out"] / name for role, name in manifest["files"].items() if role != "tokenizer"]
    print(f"exported {manifest['task']} as {parsed['format']}: {', '.join(map(str, models))}")
    rows, inputs, tolerance = parity["rows"], parity["inputs"], parity["tolerance"]
    print(f"parity on {rows} rows ({inputs} inputs): max |Δ| {worst} (tolerance {tolerance:g})")
    print(f"client manifest: {parsed['out'] / 'cmvl_export.json'}")
