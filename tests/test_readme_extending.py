"""The README's "Extending cmvl" example is real: its Python file in a package of the user's own (a temporary folder
on PYTHONPATH) and its YAML in a user config folder (a temporary CMVL_CONFIG_DIR) become a `fusion=` choice that
the CLI validates and trains with the README's own command; nothing is written into cmvl/ or cmvl/conf/."""

from __future__ import annotations

import re
import shlex

from tests.conftest import REPO, TINY_WORLD, assert_one_line_error, cli_in_process, run_cli


def _example() -> tuple[dict[str, str], list[str]]:
    """The section's files (path → text) and the arguments of its `cmvl train` line."""
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Extending cmvl") :]
    section = section[: section.index("\n## ", 3)]
    files = {m.group(2): m.group(1) for m in re.finditer(r"```(?:python|yaml)\n(# (\S+)\n.*?)```", section, re.S)}
    commands = re.search(r"```bash\n(.*?)```", section, re.S).group(1).splitlines()
    train = next(line for line in commands if line.startswith("cmvl train "))
    return files, shlex.split(train)[2:]


def test_the_readme_fusion_example_trains(tmp_path, tiny_world):
    files, arguments = _example()
    assert set(files) == {"mylab/gated_sum.py", "fusion/gated_sum.yaml"}, files
    code, conf = tmp_path / "code", tmp_path / "cmvl-conf"
    (code / "mylab").mkdir(parents=True)
    (conf / "fusion").mkdir(parents=True)
    (code / "mylab" / "gated_sum.py").write_text(files["mylab/gated_sum.py"])
    (conf / "fusion" / "gated_sum.yaml").write_text(files["fusion/gated_sum.yaml"])
    env = {"CMVL_CONFIG_DIR": str(conf), "PYTHONPATH": str(code)}  # the user's package, outside the checkout
    result = run_cli(
        "train",
        *arguments,
        *TINY_WORLD,
        "trainer=debug",
        f"hydra.run.dir={tmp_path / 'run'}",
        cwd=tmp_path,
        env_extra=env,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "best val/vqa/acc" in result.stdout
    assert "_target_: mylab.gated_sum.GatedSumFusion" in (tmp_path / "run" / "config.yaml").read_text()
    assert not (REPO / "cmvl" / "conf" / "fusion" / "gated_sum.yaml").exists()


def test_a_user_choice_is_held_to_the_allow_list(tmp_path, monkeypatch):
    """Without `extra_target_prefixes` the user's own class is refused before anything runs (its module is never
    imported), though the YAML comes from the user's own config folder."""
    files, arguments = _example()
    (tmp_path / "fusion").mkdir()
    (tmp_path / "fusion" / "gated_sum.yaml").write_text(files["fusion/gated_sum.yaml"])
    monkeypatch.setenv("CMVL_CONFIG_DIR", str(tmp_path))
    untrusted = [a for a in arguments if not a.startswith("extra_target_prefixes")]
    result = cli_in_process("train", *untrusted, cwd=tmp_path)
    assert_one_line_error(result, "fusion._target_=mylab.gated_sum.GatedSumFusion")
    assert "extra_target_prefixes" in result.stderr
