"""`cmvl index` and `cmvl search` through the CLI: a folder indexed by a subprocess, searched both ways, results
printed and written as JSON lines; every bad input is one line and exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import assert_one_line_error, cli_in_process
from tests.inference.test_search import other_checkpoint, tiny_retrieval_checkpoint


@pytest.fixture(scope="module")
def checkpoint(cache_dir, tiny_world) -> Path:
    return tiny_retrieval_checkpoint(cache_dir)


@pytest.fixture(scope="module")
def index(checkpoint, tiny_world, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cli-index") / "index"
    result = cli_in_process("index", f"ckpt={checkpoint}", f"images={tiny_world / 'val'}", f"out={out}", cwd=out.parent)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"indexed 20 images (20 embedded now, 0 unreadable): {out}" in result.stdout
    return out


def test_search_prints_and_writes_the_ranking_both_ways(index, tiny_world, tmp_path):
    result = cli_in_process(
        "search", f"index={index}", "query=a red circle left of a square", "top_k=3", "out=results.jsonl", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line.split() for line in result.stdout.splitlines()]
    assert [row[0] for row in rows] == ["1", "2", "3"] and all(row[2] == "match" for row in rows)  # re-ranked
    records = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert [r["path"] for r in records] == [row[-1] for row in rows] and all(Path(r["path"]).is_file() for r in records)
    assert set(records[0]) == {"rank", "score", "match", "path"}
    captions = tmp_path / "captions.txt"
    captions.write_text("a red circle\n\nA green triangle.\ntwo squares\n", encoding="utf-8")
    image = sorted((tiny_world / "val").glob("*.jpg"))[0]
    result = cli_in_process(
        "search", f"index={index}", f"image={image}", f"texts={captions}", "top_k=2", "rerank=false", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert len(lines) == 2 and all(" line " in line and "match" not in line for line in lines)
    assert {line.split(": ", 1)[1] for line in lines} <= {"a red circle", "A green triangle.", "two squares"}


def test_bad_input_is_one_line(index, checkpoint, finished_tiny_run, tiny_world, tmp_path):
    other = other_checkpoint(checkpoint, tmp_path / "other.ckpt")
    vqa = finished_tiny_run / "checkpoints" / "last.ckpt"
    (tmp_path / "empty").mkdir()
    query = "query=a red circle"
    cases = [
        (["index", f"ckpt={vqa}", f"images={tiny_world / 'val'}", "out=i"], "need a retrieval one"),
        (["index", f"ckpt={checkpoint}", f"images={tmp_path / 'empty'}", "out=i"], "no image files"),
        (["index", f"ckpt={other}", f"images={tiny_world / 'val'}", f"out={index}"], "an index of another checkpoint"),
        (["search", f"index={index}", "query= "], "query= is empty"),
        (["search", f"index={index}", "query=日本 🙂"], "knows none of its words"),
        (["search", f"index={index}", query, "top_k=0"], "top_k=0: must be an integer >= 1"),
        (["search", f"index={index}", query, f"ckpt={other}"], "made by another checkpoint"),
        (["search", f"index={tmp_path / 'nowhere'}", query], "no such folder"),
        (["search", f"index={tmp_path / 'empty'}", query], "not a cmvl index"),
        (["search", query], "give index=DIR"),
        (["search", f"index={index}", query, f"texts={tmp_path}"], "one of the two"),
        (["search", f"index={index}", query, "rerank=maybe"], "must be true or false"),
        (["search", f"ckpt={vqa}", f"image={tmp_path}", "texts=t.txt"], "need a retrieval one"),
    ]
    for args, needle in cases:
        assert_one_line_error(cli_in_process(*args, cwd=tmp_path), needle)
    assert not (tmp_path / "i").exists()
