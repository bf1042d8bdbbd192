"""The README's table of contents and every in-repo link of the README and docs/ point at something that exists:
a heading of the same file (GitHub's anchor for it), or a file of the repository and, with `#anchor`, one of its
headings. Every top-level section of the README is in the table of contents."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.conftest import REPO

DOCS = sorted((REPO / "docs").glob("*.md"))
LINK = re.compile(r"\[(?P<text>[^\]]*)\]\((?P<target>[^)\s]+)\)")


def github_anchor(heading: str) -> str:
    """The id GitHub gives a heading: lower case, punctuation (backticks, parentheses, slashes, dashes other than
    '-') removed, each space a hyphen."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def prose_lines(text: str) -> list[str]:
    """The lines outside fenced code blocks (a `# comment` in a bash block is not a heading)."""
    lines, fenced = [], False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced:
            lines.append(line)
    return lines


def headings(text: str) -> list[tuple[int, str]]:
    return [(len(m.group(1)), m.group(2)) for m in map(re.compile(r"(#{1,6}) (.+)").fullmatch, prose_lines(text)) if m]


def anchors(text: str) -> set[str]:
    """Every heading's anchor; a repeated heading gets -1, -2, ... as on GitHub."""
    seen: dict[str, int] = {}
    out = set()
    for _, title in headings(text):
        base = github_anchor(title)
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def links(text: str) -> list[str]:
    return [m.group("target") for line in prose_lines(text) for m in LINK.finditer(line)]


def toc_links(readme: str) -> list[str]:
    lines = prose_lines(readme)
    start = lines.index("## Contents")
    toc = []
    for line in lines[start + 1 :]:
        if line.startswith("#"):
            break
        toc += [m.group("target") for m in LINK.finditer(line)]
    return toc


def test_github_anchor_rules():
    assert github_anchor("Multi-GPU / SLURM") == "multi-gpu--slurm"
    assert github_anchor("Config groups (`cmvl/conf/`)") == "config-groups-cmvlconf"
    assert (
        github_anchor("Measured on this machine (2 CPU cores, no GPU)") == "measured-on-this-machine-2-cpu-cores-no-gpu"
    )
    assert github_anchor("cmvl — cross-modal") == "cmvl--cross-modal"
    assert anchors("# A\n## A\n```\n# not a heading\n```\n### A\n") == {"a", "a-1", "a-2"}


def test_the_table_of_contents_points_at_headings_and_lists_every_section():
    readme = (REPO / "README.md").read_text()
    toc = toc_links(readme)
    assert len(toc) >= 10, "the README has a '## Contents' section listing its sections"
    known = anchors(readme)
    assert [t for t in toc if not t.startswith("#") or t[1:] not in known] == []
    sections = [title for level, title in headings(readme) if level == 2 and title != "Contents"]
    assert [s for s in sections if f"#{github_anchor(s)}" not in toc] == []


@pytest.mark.parametrize("page", [REPO / "README.md", *DOCS], ids=lambda p: str(Path(p).relative_to(REPO)))
def test_every_link_to_this_repository_resolves(page):
    text = page.read_text()
    broken = []
    for target in links(text):
        if re.match(r"[a-z]+:", target):  # https:, mailto: ...
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{target}: no such file")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file.read_text()):
            broken.append(f"{target}: no heading with that anchor in {file.relative_to(REPO)}")
    assert broken == []


def test_the_docs_pages_are_linked_from_the_readme():
    readme_links = {t.partition("#")[0] for t in links((REPO / "README.md").read_text())}
    assert [p.name for p in DOCS if f"docs/{p.name}" not in readme_links] == []
