"""README.md and docs/*.md link to files and headings that exist: a newcomer never lands nowhere.

Anchors follow GitHub's rules: the heading's text without markup, lowercased, every character
other than a letter, digit, '_', '-' or space dropped, spaces turned into '-', and a repeated
heading numbered ('-1', '-2', ...).
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

_LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
_HEADING = re.compile(r"#{1,6} (.*)")


def _outside_code(text: str) -> list[str]:
    """The lines of a markdown text that are not inside a fenced code block."""
    lines: list[str] = []
    fenced = False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif not fenced:
            lines.append(line)
    return lines


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading's text."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).replace("`", "").strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every anchor of a markdown file's headings, repeated headings numbered as GitHub does."""
    seen: dict[str, int] = {}
    out: set[str] = set()
    for line in _outside_code(path.read_text()):
        match = _HEADING.match(line)
        if match is None:
            continue
        base = slug(match.group(1))
        count = seen.get(base, 0)
        seen[base] = count + 1
        out.add(base if count == 0 else f"{base}-{count}")
    return out


def relative_links(path: Path) -> list[str]:
    """The targets of a markdown file's links that point inside the repository."""
    targets: list[str] = []
    for line in _outside_code(path.read_text()):
        for target in _LINK.findall(re.sub(r"`[^`]*`", "", line)):
            if not re.match(r"[a-z][a-z0-9+.-]*:", target):
                targets.append(target)
    return targets


def broken_links(path: Path, root: Path = ROOT) -> list[str]:
    """Each relative link of a file whose file or heading does not exist under root, and why."""
    broken: list[str] = []
    for target in relative_links(path):
        file_part, _, anchor = target.partition("#")
        linked = (path.parent / file_part).resolve() if file_part else path
        if not linked.is_relative_to(root):
            broken.append(f"{target}: outside the repository")
        elif not linked.exists():
            broken.append(f"{target}: no such file")
        elif anchor and (linked.suffix != ".md" or anchor not in anchors(linked)):
            broken.append(f"{target}: no heading #{anchor} in {linked.relative_to(root)}")
    return broken


def test_every_relative_link_in_the_readme_and_docs_reaches_a_file_and_heading() -> None:
    broken = {
        str(path.relative_to(ROOT)): found for path in DOCUMENTS if (found := broken_links(path))
    }
    assert broken == {}


def test_the_readme_maps_every_document_under_docs() -> None:
    linked = {
        (ROOT / target.partition("#")[0]).resolve() for target in relative_links(ROOT / "README.md")
    }
    unmapped = [p.name for p in DOCUMENTS[1:] if p.resolve() not in linked]
    assert unmapped == []


def test_anchors_follow_githubs_rules() -> None:
    assert slug("Errors: one shape per surface") == "errors-one-shape-per-surface"
    assert slug("Processes, embedded servers and `spool up`") == (
        "processes-embedded-servers-and-spool-up"
    )
    assert slug("Global order: (tx, position)") == "global-order-tx-position"
    assert slug("reporting.job_stages") == "reportingjob_stages"


def test_a_broken_anchor_or_file_is_reported(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("# Page\n\n## Two words\n\n[ok](#two-words) [bad](#nowhere) [gone](gone.md)\n")
    assert broken_links(page, root=tmp_path) == [
        "#nowhere: no heading #nowhere in page.md",
        "gone.md: no such file",
    ]
