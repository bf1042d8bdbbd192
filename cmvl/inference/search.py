"""`cmvl search`: text→image search over an index (`cmvl.inference.index`) and image→text search over a text file's
lines, with a retrieval checkpoint. The ranking is the one `cmvl eval` computes for retrieval: cosine similarity of
the L2-normalised embeddings, sorted stably (equal scores keep the candidates' order), then, when the checkpoint has
an image-text matching head, its `rerank_k` best candidates re-ordered by the matching logit (`match_logits`, as
the evaluation re-ranks). Only the checkpoint and the index are read (re-ranking decodes the k candidate images
again from their files: the index keeps embeddings, not tokens).

    retrieval, index = open_search(index="index/")
    hits = search_images(retrieval, index, "a red circle left of a square", top_k=10)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cmvl.errors import UserError
from cmvl.inference.index import (
    RetrievalModel,
    read_manifest,
    read_shard_embeddings,
    read_shard_paths,
    retrieval_model,
)
from cmvl.inference.inputs import ImageInput, known_token_count, run_images, run_texts
from cmvl.log import get_logger
from cmvl.models.tokens import Tokens
from cmvl.tasks.retrieval import match_logits
from cmvl.text_files import read_user_text

log = get_logger(__name__)


@dataclass
class ImageIndex:
    """An index folder read whole: its manifest, each image's path (relative to `root`) and embedding."""

    folder: Path
    manifest: dict[str, Any]
    root: Path  # the indexed image folder
    paths: list[str]
    embeddings: np.ndarray  # float32 N×E

    @property
    def checkpoint_sha256(self) -> str:
        return self.manifest["checkpoint"]["sha256"]


def open_index(folder: str | Path) -> ImageIndex:
    """The index in `folder`, or one line saying why it cannot be read (missing, not an index, corrupt)."""
    folder = Path(folder).expanduser()
    manifest = read_manifest(folder)
    paths = [p for shard in manifest["shards"] for p in read_shard_paths(folder, shard)]
    matrices = [read_shard_embeddings(folder, shard) for shard in manifest["shards"]]
    if not matrices:
        raise UserError(f"index={folder}: holds no image yet (cmvl index was stopped before its first shard)")
    if len({m.shape[1] for m in matrices}) != 1:
        raise UserError(f"index={folder}: a corrupt index (shards of different widths); rebuild it with overwrite=true")
    if not manifest.get("complete", False):
        log.warning(f"index {folder} is unfinished ({len(paths)} images): run the same cmvl index again to complete it")
    return ImageIndex(folder, manifest, Path(manifest["images"]), paths, np.concatenate(matrices))


def open_search(
    *, index: str | Path | None = None, ckpt: str | Path | None = None, device: str = "cpu"
) -> tuple[RetrievalModel, ImageIndex | None]:
    """The retrieval model of `ckpt` (default: the checkpoint the index was made with) and the index, if given;
    refuses a checkpoint without retrieval and an index made by another checkpoint, in one line."""
    from cmvl.run import load_run

    opened = open_index(index) if index is not None else None
    if ckpt is None:
        if opened is None:
            raise UserError("search needs index=DIR (text→image), or ckpt=PATH with image= and texts= (image→text)")
        ckpt = Path(opened.manifest["checkpoint"]["path"])
        if not ckpt.is_file():
            raise UserError(f"index={index}: its checkpoint {ckpt} is not there any more; give ckpt=PATH")
    retrieval = retrieval_model(load_run(ckpt, device=device))
    if opened is not None and opened.checkpoint_sha256 != retrieval.run.checkpoint.sha256:
        raise UserError(
            f"index={index} was made by another checkpoint (sha256 {opened.checkpoint_sha256[:12]}…, "
            f"{opened.manifest['checkpoint']['path']}); ckpt={ckpt} is {retrieval.run.checkpoint.sha256[:12]}…"
        )
    return retrieval, opened


@dataclass
class Hit:
    """One result: its rank (1 = best), the embeddings' cosine similarity and, for a re-ranked candidate, the
    matching head's logit; `path` for an image, `line` and `text` for a text."""

    rank: int
    score: float
    match: float | None = None
    path: str | None = None
    line: int | None = None
    text: str | None = None

    def record(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None or k == "match"}


def reranking(retrieval: RetrievalModel, rerank: bool | None, rerank_k: int | None, top_k: int) -> int:
    """How many of the best candidates the matching head re-orders (0: none). `rerank` None: when the checkpoint
    has the head; `rerank_k` None: the checkpoint's `task.rerank_k` (what its evaluation re-ranks), else `top_k`.
    Checked before anything is encoded: a count below 1 or `rerank=True` without the head is one line."""
    for key, value in (("top_k", top_k), ("rerank_k", rerank_k)):
        if value is not None and value < 1:
            raise UserError(f"{key}={value}: must be >= 1")
    if rerank is None:
        rerank = retrieval.has_matching_head
    if not rerank:
        return 0
    if not retrieval.has_matching_head:
        raise UserError("rerank=true: this checkpoint has no image-text matching head (trained without task.itm=true)")
    return rerank_k if rerank_k is not None else (retrieval.task.rerank_k or top_k)


def ranked(
    query_emb: torch.Tensor,
    candidate_emb: torch.Tensor,
    top_k: int,
    rerank_k: int,
    match: Callable[[torch.Tensor], torch.Tensor],
) -> list[tuple[int, float, float | None]]:
    """(candidate row, similarity, match logit or None) of the `top_k` best candidates: by similarity, a stable sort
    (as `cmvl.metrics.retrieval.stable_ranking`), the first `rerank_k` re-ordered by `match(rows)` (stable, as
    `cmvl.metrics.retrieval.rerank`)."""
    similarity = (query_emb[None, :] @ candidate_emb.T)[0]
    order = similarity.argsort(descending=True, stable=True)
    k = min(rerank_k, len(order))
    logits: dict[int, float] = {}
    if k:
        head = order[:k]
        matched = match(head).float().cpu()
        logits = {int(row): float(logit) for row, logit in zip(head, matched, strict=True)}
        order = torch.cat([head[matched.argsort(descending=True, stable=True)], order[k:]])
    return [(int(row), float(similarity[row]), logits.get(int(row))) for row in order[:top_k]]


def check_query(retrieval: RetrievalModel, query: str) -> str:
    """The query, or one line for an empty one or one the tokenizer knows no word of."""
    if not query.strip():
        raise UserError('query= is empty: give the words to search for, e.g. query="a red circle"')
    if known_token_count(retrieval.run, query) == 0:
        raise UserError(f"query={query!r:.80}: the checkpoint's tokenizer knows none of its words")
    return query


def search_images(
    retrieval: RetrievalModel,
    index: ImageIndex,
    query: str,
    *,
    top_k: int = 10,
    rerank: bool | None = None,
    rerank_k: int | None = None,
) -> list[Hit]:
    """The index's `top_k` images best matching the text `query` (text→image)."""
    run, k = retrieval.run, reranking(retrieval, rerank, rerank_k, top_k)
    input_ids, attention_mask = run_texts(run, [check_query(retrieval, query)])
    text_tokens, text_emb = retrieval.encode_texts(input_ids, attention_mask)

    def match(rows: torch.Tensor) -> torch.Tensor:
        image_tokens, _ = retrieval.encode_images(run_images(run, [index.root / index.paths[r] for r in rows]))
        return _match(retrieval, image_tokens, _repeat(text_tokens, len(rows)))

    hits = ranked(text_emb[0].cpu(), torch.from_numpy(index.embeddings), top_k, k, match)
    return [
        Hit(rank, score, logit, path=str(index.root / index.paths[row])) for rank, (row, score, logit) in _ranks(hits)
    ]


def search_texts(
    retrieval: RetrievalModel,
    image: ImageInput,
    texts: Sequence[str],
    *,
    lines: Sequence[int] | None = None,
    top_k: int = 10,
    rerank: bool | None = None,
    rerank_k: int | None = None,
    batch_size: int = 64,
) -> list[Hit]:
    """The `top_k` of `texts` best matching `image` (image→text); `lines`: each text's line number in its file. A
    text given twice is embedded and matched once: its copies score the same and keep their order."""
    run, k = retrieval.run, reranking(retrieval, rerank, rerank_k, top_k)
    if not texts:
        raise UserError("texts=: no text to search (the file has no non-empty line)")
    position = {text: i for i, text in enumerate(dict.fromkeys(texts))}
    distinct = list(position)
    copy_of = torch.tensor([position[t] for t in texts]) if len(distinct) < len(texts) else None
    image_tokens, image_emb = retrieval.encode_images(run_images(run, [image]))
    parts = range(0, len(distinct), batch_size)
    text_emb = torch.cat(
        [retrieval.encode_texts(*run_texts(run, distinct[i : i + batch_size]))[1].cpu() for i in parts]
    )
    if copy_of is not None:
        text_emb = text_emb[copy_of]

    def match(rows: torch.Tensor) -> torch.Tensor:
        candidates = {text: i for i, text in enumerate(dict.fromkeys(texts[r] for r in rows.tolist()))}
        text_tokens, _ = retrieval.encode_texts(*run_texts(run, list(candidates)))
        logits = _match(retrieval, _repeat(image_tokens, len(candidates)), text_tokens)
        return logits[torch.tensor([candidates[texts[r]] for r in rows.tolist()], device=logits.device)]

    hits = ranked(image_emb[0].cpu(), text_emb, top_k, k, match)
    numbers = list(lines) if lines is not None else list(range(1, len(texts) + 1))
    return [Hit(rank, score, logit, line=numbers[row], text=texts[row]) for rank, (row, score, logit) in _ranks(hits)]


def read_text_lines(path: str | Path) -> tuple[list[str], list[int]]:
    """The non-empty lines of a UTF-8 text file (trailing whitespace removed) and their 1-based line numbers."""
    path = Path(path).expanduser()
    content = read_user_text(path, "texts", folder_hint="give a text file with one text per line")
    rows = [(n, line.rstrip()) for n, line in enumerate(content.splitlines(), start=1) if line.strip()]
    return [text for _, text in rows], [n for n, _ in rows]


def _ranks(hits: list) -> list:
    return list(enumerate(hits, start=1))


def _repeat(tokens: Tokens, count: int) -> Tokens:
    return tokens.select(torch.zeros(count, dtype=torch.long, device=tokens.feats.device))


@torch.inference_mode()
def _match(retrieval: RetrievalModel, images: Tokens, texts: Tokens) -> torch.Tensor:
    return match_logits(retrieval.run.model, retrieval.head, images, texts)
