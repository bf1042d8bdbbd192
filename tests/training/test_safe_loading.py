"""Untrusted input is refused with one line and no side effect: a checkpoint whose pickle runs code, a config
`_target_` outside the allowed packages, and an annotation file whose image path reaches outside the image folder."""

from __future__ import annotations

import json
import os

import pytest
import torch

from cmvl.data.sources.coco import COCOSource
from cmvl.errors import DataError
from tests.conftest import TINY_WORLD, cli_in_process


class _RunsCodeOnLoad:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_checkpoint_that_runs_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": _RunsCodeOnLoad(str(marker)), "cmvl": {}}, evil)
    result = cli_in_process("eval", f"ckpt={evil}", cwd=tmp_path)
    assert result.returncode == 2 and f"not a readable checkpoint: {evil}" in result.stderr
    resumed = cli_in_process(
        "train", *TINY_WORLD, "trainer=debug", f"resume={evil}", f"hydra.run.dir={tmp_path / 'r'}", cwd=tmp_path
    )
    assert resumed.returncode == 2 and "Traceback" not in resumed.stderr
    assert not marker.exists()


@pytest.mark.parametrize("override", ["fusion._target_=os.system", "+callbacks.x._target_=os.system"])
def test_a_target_outside_the_allowed_packages_is_refused(tmp_path, override):
    marker = tmp_path / "pwned"
    key = override.split("=")[0].removesuffix("._target_").lstrip("+")
    result = cli_in_process("train", override, f"+{key}.command=touch {marker}", "trainer=debug", cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "._target_=os.system: not a" in result.stderr and "extra_target_prefixes=[your_package]" in result.stderr
    assert not marker.exists()


def test_an_image_path_outside_the_image_folder_is_refused(tmp_path, cache_dir):
    (tmp_path / "annotations").mkdir()
    (tmp_path / "val2017").mkdir()
    doc = {
        "images": [{"id": 1, "file_name": "../../outside.jpg", "width": 8, "height": 8}],
        "annotations": [{"image_id": 1, "id": 1, "caption": "a caption"}],
    }
    (tmp_path / "annotations" / "captions_val2017.json").write_text(json.dumps(doc))
    with pytest.raises(DataError, match="image path 'val2017/../../outside.jpg' points outside the image folder"):
        COCOSource(root=str(tmp_path)).table("captions", "val")
