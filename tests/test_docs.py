"""The manual stays true to the tree: links, anchors and paths in README.md and docs/*.md resolve."""
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md"))
REPO_PATH = re.compile(r"^(gdet|tools|configs|tests|docs)/[\w./-]*$")


def _prose(text: str) -> str:
    """The page without HTML comments and fenced code blocks."""
    text = re.sub(r"<!--.*?-->", "", text, flags=re.S)
    return re.sub(r"```.*?```", "", text, flags=re.S)


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    return {_slug(h) for h in re.findall(r"^#+\s+(.*)$", _prose(page.read_text()), flags=re.M)}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_links_and_paths_resolve(page):
    prose = _prose(page.read_text())
    problems = []
    for target in re.findall(r"\]\(([^)\s]+)\)", prose):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            problems.append(f"link {target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            problems.append(f"link {target}: no such heading")
    for token in re.findall(r"`([^`\s]+)`", prose):
        if REPO_PATH.match(token) and not (ROOT / token).exists():
            problems.append(f"path {token} does not exist")
    assert not problems, f"{page.name}: " + "; ".join(problems)


def test_architecture_map_names_existing_files():
    text = re.sub(r"<!--.*?-->", "", (ROOT / "docs" / "DEVELOPING.md").read_text(), flags=re.S)
    tree = re.search(r"## Architecture map\s+```(.*?)```", text, flags=re.S).group(1)
    named, top, sub = [], None, None
    for line in tree.splitlines():
        if m := re.match(r"^(\w+)/", line):
            top, sub, rest = m.group(1), None, line[m.end():]
            named.append(Path(top))
        elif m := re.match(r"^  (\w+)/", line):
            sub, rest = m.group(1), line[m.end():]
            named.append(Path(top, sub))
        else:
            if re.match(r"^  [\w.]+\.py\b", line):
                sub = None
            rest = line
        named += [Path(top, sub or "", name) for name in re.findall(r"\b([A-Za-z_]\w*\.py)\b", rest)]
    assert len(named) > 50, "the map should name the packages and their modules"
    missing = [str(p) for p in named if not (ROOT / p).exists()]
    assert not missing, f"docs/DEVELOPING.md names files that do not exist: {missing}"


def test_slug_matches_github_anchors():
    assert _slug("Detecting objects: `gdet detect`") == "detecting-objects-gdet-detect"
    assert _slug("Records and the box convention") == "records-and-the-box-convention"
    assert _slug("Speed, H100") == "speed-h100"
