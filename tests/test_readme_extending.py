"""The README's "Extending cmvl" example is real: its Python file and YAML, written where the README says,
become a `fusion=` choice that the CLI validates and trains."""

from __future__ import annotations

import re

from tests.conftest import REPO, TINY_WORLD, run_cli


def test_the_readme_fusion_example_trains(tmp_path, tiny_world):
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Extending cmvl") :]
    (python_file, python_code), (yaml_file, yaml_text) = [
        (m.group(2), m.group(1)) for m in re.finditer(r"```(?:python|yaml)\n(# (\S+)\n.*?)```", section, re.S)
    ][:2]
    assert python_file == "cmvl/models/fusion/gated_sum.py" and yaml_file == "cmvl/conf/fusion/gated_sum.yaml"
    written = [REPO / python_file, REPO / yaml_file]
    try:
        written[0].write_text(python_code)
        written[1].write_text(yaml_text)
        result = run_cli(
            "train", *TINY_WORLD, "trainer=debug", "fusion=gated_sum", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path
        )
    finally:
        for path in written:
            path.unlink(missing_ok=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "best val/vqa/acc" in result.stdout
