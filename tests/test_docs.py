"""The documentation holds together: every relative link in README.md and
docs/ points to a file that exists and, with ``#anchor``, to a heading of
it (as GitHub names headings), and the README stays a front page."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
README_MAX_LINES = 250

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped
    (``_`` and ``-`` kept), spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    out: set[str] = set()
    fenced = False
    for line in path.read_text().splitlines():
        if line.startswith("```"):
            fenced = not fenced
        m = re.match(r"^#{1,6} (.*)$", line)
        if m and not fenced:
            base = slug(m.group(1))
            name, n = base, 0
            while name in out:                  # GitHub numbers duplicates
                n += 1
                name = f"{base}-{n}"
            out.add(name)
    return out


def links(path: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    return [t for t in LINK.findall(text) if not re.match(r"^[a-z]+:", t)]


def broken(path: Path) -> list[str]:
    bad = []
    for target in links(path):
        file, _, anchor = target.partition("#")
        dest = (path.parent / file).resolve() if file else path
        if not dest.exists():
            bad.append(f"{path.name}: {target}: no such file")
        elif anchor and (dest.suffix != ".md" or anchor not in anchors(dest)):
            bad.append(f"{path.name}: {target}: no such heading")
    return bad


def test_every_relative_link_resolves():
    assert [b for page in PAGES for b in broken(page)] == []


def test_a_broken_link_is_found(tmp_path):
    """The check can fail: a missing file and a missing heading are found,
    a good link is not."""
    (tmp_path / "a.md").write_text("# Top\n\n## Head or tail: where 5.7 put it\n")
    page = tmp_path / "b.md"
    page.write_text("[ok](a.md#head-or-tail-where-57-put-it) [no](c.md) "
                    "[nohead](a.md#missing) ![img](a.md) [web](https://example.org)\n"
                    "```\n[not a link](x.md)\n```\n")
    assert broken(page) == ["b.md: c.md: no such file", "b.md: a.md#missing: no such heading"]


def test_the_readme_is_a_front_page():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= README_MAX_LINES
    for page in ("designs", "measuring", "measurements", "real-programs", "run", "faults",
                 "engine", "model-and-tests"):
        assert f"docs/{page}.md" in "\n".join(lines), page
