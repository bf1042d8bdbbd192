"""`cmvl search index=DIR query=TEXT` (text→image) and `cmvl search image=PATH texts=FILE` (image→text)."""

from __future__ import annotations

import json

from cmvl.cli.args import Option, Spec, integer, parse, path, wants_help
from cmvl.cli.index_cmd import true_or_false
from cmvl.errors import UserError

SEARCH = Spec(
    "search",
    """Text→image: the images of an index (cmvl index) that best match query=, best first, with the embeddings'
cosine similarity. Image→text: the lines of texts=FILE that best match image=PATH. With a checkpoint trained with
task.itm=true, the rerank_k best candidates are re-ordered by its image-text matching head (its logit is printed
too), as retrieval's evaluation does. Reads only the index and its checkpoint.""",
    (
        Option(
            "index",
            "an index folder made by cmvl index (its checkpoint is the one it was made with)",
            path,
            None,
            "DIR",
        ),
        Option("query", "the text to find images for", str, None, "TEXT"),
        Option("image", "the image to find texts for (with texts=)", path, None, "PATH"),
        Option("texts", "a UTF-8 text file, one candidate text per line (with image=)", path, None, "FILE"),
        Option("ckpt", "the checkpoint (default: the index's; must be the same file's bytes)", path, None, "PATH"),
        Option("top_k", "how many results", integer(1), 10, "K"),
        Option(
            "rerank",
            "re-rank with the matching head (default: when the checkpoint has one)",
            true_or_false,
            None,
            "BOOL",
        ),
        Option("rerank_k", "candidates re-ranked (default: the checkpoint's task.rerank_k)", integer(1), None, "K"),
        Option("out", "also write the results as JSON lines to this file", path, None, "FILE"),
        Option("batch_size", "texts embedded at once (image→text)", integer(1), 64, "N"),
        Option("device", "where the model runs: cpu, cuda, cuda:1, mps", str, "cpu", "DEV"),
    ),
)


def search_command(args: list[str]) -> None:
    if wants_help(args):
        print(SEARCH.help())
        return
    parsed = parse(SEARCH, args)
    text_to_image = parsed["query"] is not None
    if text_to_image == (parsed["image"] is not None or parsed["texts"] is not None):
        raise UserError("search: give query=TEXT (with index=DIR), or image=PATH with texts=FILE, one of the two")
    if text_to_image and parsed["index"] is None:
        raise UserError("search: query= searches an index; give index=DIR (made by cmvl index)")
    if not text_to_image and (parsed["image"] is None or parsed["texts"] is None):
        raise UserError("search: image→text search needs both image=PATH and texts=FILE")
    if parsed["out"] is not None:
        from cmvl.config.writable import check_writable_dir

        check_writable_dir(parsed["out"].parent, "out=")
    from cmvl.inference import search

    retrieval, index = search.open_search(index=parsed["index"], ckpt=parsed["ckpt"], device=parsed["device"])
    ranking = {"top_k": parsed["top_k"], "rerank": parsed["rerank"], "rerank_k": parsed["rerank_k"]}
    if text_to_image:
        hits = search.search_images(retrieval, index, parsed["query"], **ranking)
    else:
        texts, lines = search.read_text_lines(parsed["texts"])
        hits = search.search_texts(
            retrieval, parsed["image"], texts, lines=lines, batch_size=parsed["batch_size"], **ranking
        )
    for hit in hits:
        match = "" if hit.match is None else f"  match {hit.match:+.4f}"
        what = hit.path if text_to_image else f"line {hit.line}: {hit.text}"
        print(f"{hit.rank:>3}  {hit.score:.4f}{match}  {what}")
    if parsed["out"] is not None:
        from cmvl.atomic_file import atomic_write

        with atomic_write(parsed["out"]) as f:
            f.writelines(json.dumps(hit.record()) + "\n" for hit in hits)
