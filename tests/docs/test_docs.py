"""The docs check: README.md, infra/README.md and docs/*.md hold together and match the code.

- Every relative link resolves to a file in the repository, and every ``#anchor`` to a heading of its page (GitHub's
  rules: lower case, punctuation dropped, spaces to hyphens, ``-1``, ``-2`` for repeats).
- Every setting of ``infra/settings.py`` is a row of exactly one table (first cell `` `key` ``), every option of the
  job's parser (``job/config.py``) likewise (first cell `` `--option ...` ``), and every option of each
  ``job.model_package`` sub-command is exactly one row whose first two cells are `` `sub-command` `` and
  `` `--option ...` ``: each fact on one page, none missing.
- No line is over 120 characters, except table rows and lines that are a single link or URL (Markdown cannot wrap
  them).

What this cannot check: that a page's prose is true. The settings are read from the source (``ast``), so that this
test loads no CDK.
"""

from __future__ import annotations

import argparse
import ast
import re
from collections import Counter
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
PAGES = sorted([REPO_ROOT / "README.md", REPO_ROOT / "infra" / "README.md", *(REPO_ROOT / "docs").rglob("*.md")])
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)|!\[[^\]]*\]\(([^)\s]+)\)")
MAX_LINE = 120


def prose_lines(page: Path) -> list[tuple[int, str, bool]]:
    """(line number, text, inside a code fence) for every line of ``page``."""
    lines, fenced = [], False
    for number, line in enumerate(page.read_text().splitlines(), 1):
        if line.lstrip().startswith("```"):
            fenced = not fenced
            lines.append((number, line, True))
        else:
            lines.append((number, line, fenced))
    return lines


def slug(heading: str) -> str:
    text = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    seen: Counter = Counter()
    found = set()
    for _, line, fenced in prose_lines(page):
        match = re.match(r"#{1,6} (.*)", line)
        if match and not fenced:
            base = slug(match.group(1))
            found.add(base if not seen[base] else f"{base}-{seen[base]}")
            seen[base] += 1
    return found


def table_rows(page: Path) -> list[list[str]]:
    return [[cell.strip().replace("\\|", "|") for cell in re.split(r"(?<!\\)\|", line.strip().strip("|"))]
            for _, line, fenced in prose_lines(page) if not fenced and line.lstrip().startswith("|")]


def all_rows() -> list[tuple[Path, list[str]]]:
    return [(page, row) for page in PAGES for row in table_rows(page)]


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(REPO_ROOT)) for p in PAGES])
def test_every_relative_link_and_anchor_resolves(page):
    broken = []
    for number, line, fenced in prose_lines(page):
        if fenced:
            continue
        for match in LINK.finditer(line):
            target = match.group(1) or match.group(2)
            if re.match(r"[a-z]+:", target):
                continue
            path_part, _, anchor = target.partition("#")
            destination = (page.parent / path_part).resolve() if path_part else page
            if not destination.exists():
                broken.append(f"{page.name}:{number}: {target}: no such file")
            elif anchor and destination.suffix == ".md" and anchor not in anchors(destination):
                broken.append(f"{page.name}:{number}: {target}: no heading with that anchor")
    assert not broken, "\n".join(broken)


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(REPO_ROOT)) for p in PAGES])
def test_no_line_is_over_120_characters(page):
    long = [f"{page.name}:{number}: {len(line)} characters" for number, line, _ in prose_lines(page)
            if len(line) > MAX_LINE and not line.lstrip().startswith("|")
            and not re.fullmatch(r"\s*(\S*https?://\S+|\[[^\]]*\]\([^)]*\)[.,;:)]*)", line)]
    assert not long, "\n".join(long)


def settings_keys() -> list[str]:
    tree = ast.parse((REPO_ROOT / "infra" / "settings.py").read_text())
    (settings,) = [node for node in tree.body if isinstance(node, ast.ClassDef) and node.name == "Settings"]
    return [node.target.id for node in settings.body if isinstance(node, ast.AnnAssign)]


def test_every_setting_is_documented_exactly_once():
    counts = Counter(row[0] for _, row in all_rows())
    keys = settings_keys()
    assert len(keys) > 20
    wrong = {key: counts[f"`{key}`"] for key in keys if counts[f"`{key}`"] != 1}
    assert not wrong, f"settings documented other than once (times): {wrong}"


def options(parser: argparse.ArgumentParser) -> list[str]:
    return [action.option_strings[-1] for action in parser._actions
            if action.option_strings and action.help != argparse.SUPPRESS and "-h" not in action.option_strings]


def option_cell(cell: str) -> str:
    """`--input URI` -> --input."""
    match = re.fullmatch(r"`(--[a-z0-9-]+)[^`]*`", cell)
    return match.group(1) if match else ""


def test_every_job_option_is_documented_exactly_once():
    from job.config import _argument_parser

    counts = Counter(option_cell(row[0]) for _, row in all_rows())
    wanted = options(_argument_parser())
    assert "--model" in wanted
    wrong = {option: counts[option] for option in wanted if counts[option] != 1}
    assert not wrong, f"job options documented other than once (times): {wrong}"


def test_every_model_package_option_is_documented_exactly_once():
    from job.model_package import _parser

    (commands,) = [action for action in _parser()._actions if isinstance(action, argparse._SubParsersAction)]
    counts = Counter((row[0], option_cell(row[1])) for _, row in all_rows() if len(row) > 1)
    wanted = [(f"`{name}`", option) for name, sub in commands.choices.items() for option in options(sub)]
    assert len(commands.choices) >= 4
    wrong = {f"{name} {option}": counts[(name, option)] for name, option in wanted if counts[(name, option)] != 1}
    assert not wrong, f"model_package options documented other than once (times): {wrong}"
