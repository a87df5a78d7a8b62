"""The documentation points at things that exist: every relative link (and its #anchor), every
repository path quoted in backticks, every `python -m bench.NAME` command. A module that moves
or a heading that is renamed fails here until the page that names it follows."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md"), ROOT / "api_shim/README.md",
                ROOT / "deploy/README.md", ROOT / "tests/README.md"])

LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
CODE_SPAN = re.compile(r"`([^`\n]+)`")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.M | re.S)
INDENTED = re.compile(r"^(?: {4}|\t).*$", re.M)
BENCH = re.compile(r"python -m bench\.([a-z_][a-z0-9_]*)")  # not a placeholder like NAME
PATHLIKE = re.compile(r"[\w.-]+(?:/[\w.-]+)*/?")
SOURCE = (".py", ".sh", ".go", ".lua")  # not .yaml: ConfigMap keys are named like files


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = FENCE.sub("", page.read_text())
    return {slug(m) for m in re.findall(r"^#{1,6}\s+(.*?)\s*#*$", text, re.M)}


def prose(text: str) -> str:
    """A page without its code blocks (commands and samples, not references)."""
    return INDENTED.sub("", FENCE.sub("", text))


# directories the programs make when they run (ignored by git): what the docs say lands there
# does not exist in a clean clone, and may or may not after a run
MADE_AT_RUN_TIME = {".vcm", ".venv"}


def quoted_paths(page: Path, text: str) -> list[str]:
    """Backticked spans that name a repository path: a source file (`deps.py`), or a path whose
    first part is an entry of the repository root or of the page's own directory
    (`support/procs.py` in tests/README.md)."""
    found = []
    for span in CODE_SPAN.findall(prose(text)):
        if not PATHLIKE.fullmatch(span):
            continue
        first = span.split("/")[0]
        if first in MADE_AT_RUN_TIME:
            continue
        if span.endswith(SOURCE) or ("/" in span.rstrip("/") and first and (
                (ROOT / first).exists() or (page.parent / first).exists())):
            found.append(span)
    return found


def problems(page: Path, text: str | None = None) -> list[str]:
    """What `page` (or `text`, read as if it were at `page`) points at that does not exist."""
    text = page.read_text() if text is None else text
    found = []
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            found.append(f"link {target}: no {dest.relative_to(ROOT)}")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            found.append(f"link {target}: no heading #{anchor} in {dest.relative_to(ROOT)}")
    for span in quoted_paths(page, text):
        if not ((ROOT / span).exists() or (page.parent / span).exists()):
            found.append(f"path `{span}` does not exist")
    for name in BENCH.findall(text):
        if not (ROOT / "bench" / f"{name}.py").exists():
            found.append(f"`python -m bench.{name}`: no bench/{name}.py")
    return found


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_links_and_paths_exist(page: Path) -> None:
    assert problems(page) == []


def test_the_check_sees_a_broken_link_a_missing_heading_and_a_moved_module() -> None:
    page = ROOT / "docs" / "task-api.md"
    text = page.read_text() + ("\n[gone](placement.md#no-such-heading) [away](nowhere.md) "
                               "`workers/no_such_module.py` `python -m bench.no_such_bench`\n")
    assert problems(page, text) == [
        "link placement.md#no-such-heading: no heading #no-such-heading in docs/placement.md",
        "link nowhere.md: no docs/nowhere.md",
        "path `workers/no_such_module.py` does not exist",
        "`python -m bench.no_such_bench`: no bench/no_such_bench.py"]
