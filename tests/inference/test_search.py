"""`cmvl index` / `cmvl search` as a library: the index holds evaluation's image embeddings, search ranks as
retrieval's evaluation does (re-ranking included), a stopped index continues without embedding again, and bad
input is one line."""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import cmvl
from cmvl.errors import DataError, UserError
from cmvl.evaluation import score_split
from cmvl.inference import index as index_module
from cmvl.inference.index import build_index, read_manifest, retrieval_model
from cmvl.inference.search import open_index, open_search, read_text_lines, search_images, search_texts
from cmvl.training.build import build_datamodule
from tests.conftest import TINY_TRAINING, TINY_WORLD_ANY_TASK, cli_in_process, load_checkpoint_file

RERANK_K = 5  # of the 20 validation images: re-ranking changes part of the top 10 and leaves the rest


def tiny_retrieval_checkpoint(cache_dir: Path) -> Path:
    """A tiny retrieval checkpoint with a matching head (2 training steps, no validation), trained once per test
    process: the test modules of index and search share it through the session's cache folder (read only)."""
    run_dir = cache_dir / "tiny-retrieval-run"
    checkpoint = run_dir / "checkpoints" / "last.ckpt"
    if not checkpoint.is_file():
        shutil.rmtree(run_dir, ignore_errors=True)
        overrides = [*TINY_WORLD_ANY_TASK, *TINY_TRAINING, "trainer.max_epochs=1", "trainer.limit_train_batches=2"]
        overrides += ["trainer.limit_val_batches=0", "logger=none", "task=retrieval", "task.itm=true"]
        result = cli_in_process(
            "train", *overrides, f"task.rerank_k={RERANK_K}", f"hydra.run.dir={run_dir}", cwd=cache_dir
        )
        assert result.returncode == 0, result.stderr[-3000:]
    return checkpoint


def other_checkpoint(checkpoint: Path, out: Path) -> Path:
    """The same run with one weight changed: another checkpoint (other bytes, other sha256)."""
    saved = load_checkpoint_file(checkpoint)
    weight = "model.heads.retrieval.image_proj.bias"
    saved["state_dict"][weight] = saved["state_dict"][weight] + 1.0
    torch.save(saved, out)
    return out


def image_id(path: str | Path) -> int:
    return int(re.search(r"(\d+)\.jpg$", str(path)).group(1))


@pytest.fixture(scope="module")
def checkpoint(cache_dir, tiny_world) -> Path:
    return tiny_retrieval_checkpoint(cache_dir)


@pytest.fixture(scope="module")
def retrieval(checkpoint):
    return retrieval_model(cmvl.load_run(checkpoint))


@pytest.fixture(scope="module")
def val_index(retrieval, tiny_world, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("index") / "val"
    report = build_index(retrieval.run, tiny_world / "val", out, batch_size=8, shard_size=8)
    assert (report.images, report.embedded, report.skipped) == (20, 20, [])
    return out


def evaluation_embeddings(run) -> tuple[dict[int, np.ndarray], list[tuple[int, str, np.ndarray]]]:
    """What retrieval's evaluation embeds for the validation split: image id → embedding, and each caption (id, text,
    embedding) in the split's row order."""
    loader = build_datamodule(run.config, task=run.task, tokenizer=run.tokenizer).eval_dataloaders("val")["retrieval"]
    images, captions = {}, []
    with torch.inference_mode():
        for batch in loader:
            outputs = run.task.eval_forward(run.model, batch)
            targets = batch.targets
            for row, image in enumerate(batch.image_index.tolist()):
                images[int(targets.image_id[row])] = outputs.image_emb[image].numpy()
                caption = (int(targets.caption_id[row]), batch.texts[row], outputs.text_emb[row].numpy())
                captions.append((int(batch.index[row]), *caption))
    captions.sort(key=lambda c: c[0])
    return images, [(caption_id, text, emb) for _, caption_id, text, emb in captions]


def test_search_ranks_as_retrieval_evaluation_does(retrieval, val_index, tiny_world):
    run = retrieval.run
    eval_images, eval_captions = evaluation_embeddings(run)
    rankings = score_split(run, "val").predictions["retrieval"]
    run.model.eval()
    index = open_index(val_index)
    assert sorted(image_id(p) for p in index.paths) == sorted(eval_images)
    for path, embedding in zip(index.paths, index.embeddings, strict=True):
        np.testing.assert_allclose(embedding, eval_images[image_id(path)], atol=1e-5)
    # text→image: every caption's 10 best images (the first RERANK_K re-ordered by the matching head)
    eval_t2i = {r["caption_id"]: r["image_ids"] for r in rankings["text_to_image"]}
    texts = [text for _, text, _ in eval_captions]
    for caption_id, text, _ in eval_captions:
        hits = search_images(retrieval, index, text, top_k=10)
        assert [image_id(h.path) for h in hits] == eval_t2i[caption_id], text
        assert all(h.match is not None for h in hits[:RERANK_K]) and all(h.match is None for h in hits[RERANK_K:])
    unranked = search_images(retrieval, index, texts[0], top_k=20, rerank=False)
    scores = [h.score for h in unranked]
    assert scores == sorted(scores, reverse=True) and all(h.match is None for h in unranked)
    query = torch.from_numpy(eval_captions[0][2])
    expected = {image_id(p): float(torch.from_numpy(e) @ query) for p, e in zip(index.paths, index.embeddings)}
    assert all(abs(expected[image_id(h.path)] - h.score) < 1e-5 for h in unranked)
    # image→text: every image's 10 best captions among the split's. Search matches a caption written twice once
    # (its copies keep the file's order); evaluation scores each copy in its own batch, so the copies' order there
    # is float noise: the captions are compared by their text.
    eval_i2t = {r["image_id"]: r["caption_ids"] for r in rankings["image_to_text"]}
    text_of = {caption_id: text for caption_id, text, _ in eval_captions}
    for path in index.paths:
        hits = search_texts(retrieval, index.root / path, texts, top_k=10, batch_size=16)
        assert [h.text for h in hits] == [text_of[c] for c in eval_i2t[image_id(path)]], path
        copies = [(a, b) for a, b in zip(hits, hits[1:]) if a.text == b.text]
        assert all(a.score == b.score and a.line < b.line for a, b in copies)  # one score, the file's order
        assert all(a.match == b.match for a, b in copies if b.match is not None)  # both re-ranked: one logit
    assert rankings["text_to_image"] and rankings["image_to_text"]


def test_a_stopped_index_continues_without_embedding_again(retrieval, val_index, tiny_world, tmp_path, monkeypatch):
    embedded: list[int] = []
    encode = index_module.RetrievalModel.encode_images

    def counting(self, pixels):
        if len(embedded) == 2 and stop:
            raise KeyboardInterrupt  # Ctrl-C in the third batch
        embedded.append(len(pixels))
        return encode(self, pixels)

    monkeypatch.setattr(index_module.RetrievalModel, "encode_images", counting)
    out, stop = tmp_path / "index", True
    with pytest.raises(KeyboardInterrupt):
        build_index(retrieval.run, tiny_world / "val", out, batch_size=4, shard_size=4)
    manifest = read_manifest(out)
    assert [s["count"] for s in manifest["shards"]] == [4, 4] and not manifest["complete"]
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    stop = False
    report = build_index(retrieval.run, tiny_world / "val", out, batch_size=4, shard_size=4)
    assert sum(embedded) == 8 + 12 and (report.images, report.embedded) == (20, 12)
    resumed, whole = open_index(out), open_index(val_index)
    assert resumed.paths == whole.paths and read_manifest(out)["complete"]
    np.testing.assert_allclose(resumed.embeddings, whole.embeddings, atol=1e-6)
    again = build_index(retrieval.run, tiny_world / "val", out, batch_size=4, shard_size=4)
    assert (again.images, again.embedded, sum(embedded)) == (20, 0, 20)  # nothing left to embed


def test_unreadable_images_are_skipped_and_listed_and_changed_ones_named(retrieval, tiny_world, tmp_path, capsys):
    folder = tmp_path / "photos"
    (folder / "nested").mkdir(parents=True)
    good = sorted((tiny_world / "val").glob("*.jpg"))[:3]
    shutil.copy(good[0], folder)
    shutil.copy(good[1], folder / "nested")
    shutil.copy(good[2], folder / "nested" / "third.PNG")  # a JPEG named .PNG: decoded by its bytes
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    (folder / "notes.txt").write_text("not an image file: not listed")
    report = build_index(retrieval.run, folder, tmp_path / "index")
    assert (report.images, report.embedded) == (3, 3)
    assert [s["path"] for s in report.skipped] == ["broken.jpg"] and "unreadable image" in report.skipped[0]["reason"]
    manifest = read_manifest(tmp_path / "index")
    assert manifest["skipped"] == report.skipped and manifest["complete"]
    assert open_index(tmp_path / "index").paths == [good[0].name, f"nested/{good[1].name}", "nested/third.PNG"]
    (folder / "broken.jpg").unlink()
    shutil.copy(good[2], folder / good[0].name)  # another picture under an indexed name
    shutil.copy(good[2], folder / "added.jpg")
    capsys.readouterr()
    again = build_index(retrieval.run, folder, tmp_path / "index")
    assert (again.images, again.embedded, again.skipped) == (4, 1, [])  # only the new file is embedded
    warning = capsys.readouterr().err
    assert f"indexed images: 1 changed since they were embedded ({good[0].name});" in warning
    empty, only_broken = tmp_path / "empty", tmp_path / "only_broken"
    empty.mkdir()
    only_broken.mkdir()
    (only_broken / "a.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(DataError, match="no image files"):
        build_index(retrieval.run, empty, tmp_path / "i1")
    with pytest.raises(DataError, match="none of its 1 image file"):
        build_index(retrieval.run, only_broken, tmp_path / "i2")
    with pytest.raises(DataError, match="no such folder"):
        build_index(retrieval.run, tmp_path / "missing", tmp_path / "i3")


def test_another_checkpoint_and_other_folders_are_refused(retrieval, checkpoint, val_index, tiny_world, tmp_path):
    other = other_checkpoint(checkpoint, tmp_path / "other.ckpt")
    other_run = cmvl.load_run(other)
    before = {p.name: p.stat().st_mtime_ns for p in val_index.iterdir()}
    with pytest.raises(UserError, match="an index of another checkpoint"):
        build_index(other_run, tiny_world / "val", val_index)
    with pytest.raises(UserError, match="an index of images="):
        build_index(retrieval.run, tiny_world / "test", val_index)
    assert {p.name: p.stat().st_mtime_ns for p in val_index.iterdir()} == before  # nothing written
    with pytest.raises(UserError, match="made by another checkpoint"):
        open_search(index=val_index, ckpt=other)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "thesis.tex").write_text("mine")
    with pytest.raises(UserError, match="holds files and no index"):
        build_index(retrieval.run, tiny_world / "val", tmp_path / "busy")
    copy = tmp_path / "copy"
    shutil.copytree(val_index, copy)
    rebuilt = build_index(other_run, tiny_world / "test", copy, overwrite=True)
    assert rebuilt.images == 12 and read_manifest(copy)["checkpoint"]["sha256"] == other_run.checkpoint.sha256


def test_corrupt_indexes_and_bad_queries_are_one_line(retrieval, val_index, tmp_path):
    index = open_index(val_index)
    for query, needle in [("   ", "query= is empty"), ("日本 🙂", "knows none of its words")]:
        with pytest.raises(UserError, match=needle):
            search_images(retrieval, index, query)
    for ranking in [{"top_k": 0}, {"rerank_k": -1}]:
        with pytest.raises(UserError, match="must be >= 1"):
            search_images(retrieval, index, "a red circle", **ranking)
    without_matching = replace(retrieval, head=SimpleNamespace(itm=None))
    with pytest.raises(UserError, match="no image-text matching head"):
        search_images(without_matching, index, "a red circle", rerank=True)

    def broken(change) -> Path:
        folder = tmp_path / f"broken{len(list(tmp_path.iterdir()))}"
        shutil.copytree(val_index, folder)
        change(folder)
        return folder

    def set_manifest(**keys):
        return lambda f: (f / "manifest.json").write_text(json.dumps({**read_manifest(f), **keys}))

    cases = [
        (lambda f: (f / "manifest.json").write_text("{not json"), "not readable JSON"),
        (lambda f: (f / "manifest.json").unlink(), "not a cmvl index"),
        (set_manifest(format="other"), "not a cmvl-image-index manifest"),
        (set_manifest(shards=[{"name": "../../etc/passwd", "count": 3}]), "mistypes"),
        (lambda f: (f / "shard-00001.npy").unlink(), "shard-00001.npy"),
        (lambda f: np.save(f / "shard-00000.npy", np.zeros((3, 4), np.float32)), "not float32 8"),
        (lambda f: np.save(f / "shard-00000.npy", np.array([{"x": 1}], dtype=object)), "shard-00000.npy"),
        (lambda f: (f / "shard-00002.parquet").write_bytes(b"PAR1 garbage"), "shard-00002.parquet"),
    ]
    for change, needle in cases:
        with pytest.raises(UserError, match=re.escape(needle)):
            open_index(broken(change))
    with pytest.raises(UserError, match="no such folder"):
        open_index(tmp_path / "nowhere")


def test_text_files_for_image_to_text_search(tmp_path):
    texts = tmp_path / "captions.txt"
    texts.write_text("a red circle\n\n  \ntwo blue squares  \n", encoding="utf-8")
    assert read_text_lines(texts) == (["a red circle", "two blue squares"], [1, 4])
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    for path, needle in [
        (tmp_path / "none.txt", "no such file"),
        (tmp_path, "is a folder"),
        (tmp_path / "latin1.txt", "UTF-8"),
    ]:
        with pytest.raises(UserError, match=needle):
            read_text_lines(path)
