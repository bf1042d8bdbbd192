"""One reading of a user's text file for `cmvl predict input=` and `cmvl search texts=`: a missing file, a folder
(with what to give instead) and a file that is not UTF-8 are one line naming the key, with the caller's error type."""

from __future__ import annotations

import pytest

from cmvl.errors import DataError, UserError
from cmvl.predict.requests import read_jsonl
from cmvl.text_files import read_user_text


def test_the_text_and_every_refusal(tmp_path):
    good = tmp_path / "a.txt"
    good.write_text("caf\u00e9\n", encoding="utf-8")
    assert read_user_text(good, "texts", folder_hint="give a file") == "caf\u00e9\n"
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    for path, needle in [
        (tmp_path / "none.txt", f"texts={tmp_path / 'none.txt'}: no such file"),
        (tmp_path, f"texts={tmp_path}: is a folder; give a file"),
        (tmp_path / "latin1.txt", "not a readable UTF-8 text file"),
    ]:
        with pytest.raises(DataError, match=needle):
            read_user_text(path, "texts", folder_hint="give a file", error=DataError)


def test_predicts_input_reads_through_it(tmp_path):
    (tmp_path / "latin1.jsonl").write_bytes('{"image": "caf\xe9.jpg"}\n'.encode("latin-1"))
    with pytest.raises(DataError, match="input=.*latin1.jsonl: not a readable UTF-8 text file"):
        read_jsonl(tmp_path / "latin1.jsonl")
    with pytest.raises(UserError, match="is a folder; for a folder of images use images="):
        read_jsonl(tmp_path)
