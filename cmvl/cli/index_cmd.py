"""`cmvl index ckpt=PATH images=DIR out=DIR`: embed a folder of images once for `cmvl search`."""

from __future__ import annotations

from cmvl.cli.args import Option, Spec, integer, parse, path, wants_help


def true_or_false(text: str) -> bool:
    """An option type: true or false."""
    if text.lower() not in ("true", "false"):
        raise ValueError("must be true or false")
    return text.lower() == "true"


INDEX = Spec(
    "index",
    """Embeds every image under a folder (any depth) with a retrieval checkpoint's image encoder, in batches, into an
index folder: shards of embeddings (.npy) with their image paths (.parquet) and a manifest. A stopped run continues
where it stopped when started again; images added to the folder since are embedded then. Unreadable images are
skipped and listed in the manifest. Search the index with cmvl search index=DIR query=...""",
    (
        Option("ckpt", "a retrieval checkpoint (task=retrieval, or a multitask with it)", path, metavar="PATH"),
        Option("images", "the folder of images to index", path, metavar="DIR"),
        Option(
            "out", "the index folder (new, empty, or this checkpoint's index of the same images)", path, metavar="DIR"
        ),
        Option("batch_size", "images embedded at once", integer(1), 64, "N"),
        Option("shard_size", "images per shard file (what a stopped run keeps)", integer(1), 1024, "N"),
        Option("num_workers", "processes decoding images beside the model", integer(0), 0, "N"),
        Option("device", "where the model runs: cpu, cuda, cuda:1, mps", str, "cpu", "DEV"),
        Option(
            "overwrite",
            "start the index in out= again (another checkpoint's or folder's too)",
            true_or_false,
            False,
            "BOOL",
        ),
    ),
)


def index_command(args: list[str]) -> None:
    if wants_help(args):
        print(INDEX.help())
        return
    parsed = parse(INDEX, args)
    from cmvl.inference.index import build_index
    from cmvl.log import log
    from cmvl.run import load_run

    run = load_run(parsed["ckpt"], device=parsed["device"])
    report = build_index(
        run,
        parsed["images"],
        parsed["out"],
        batch_size=parsed["batch_size"],
        shard_size=parsed["shard_size"],
        num_workers=parsed["num_workers"],
        overwrite=parsed["overwrite"],
    )
    if report.skipped:
        shown = "; ".join(s["reason"] for s in report.skipped[:3])
        more = f" and {len(report.skipped) - 3} more" if len(report.skipped) > 3 else ""
        log.warning(
            f"skipped {len(report.skipped)} unreadable image(s), listed in {report.out}/manifest.json: {shown}{more}"
        )
    counts = f"{report.embedded} embedded now, {len(report.skipped)} unreadable"
    print(f"indexed {report.images} images ({counts}): {report.out}")
