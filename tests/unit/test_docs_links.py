"""Every relative link of every ``README*.md`` names a file or folder of the checkout.

A markdown link ``[text](target)`` (or ``![alt](target)``) whose target is not a URL
(``http:``, ``mailto:``...) nor a bare ``#anchor`` is resolved against the folder of the file
that holds it, its ``#anchor`` dropped; links inside code spans and fenced code blocks are not
links and are skipped."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.conftest import REPO, readme_files

FENCE = re.compile(r"^[ \t]*(```|~~~).*?^[ \t]*\1", re.M | re.S)
CODE_SPAN = re.compile(r"(`+).+?\1", re.S)
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


def relative_links(text: str) -> list[tuple[int, str]]:
    """(line, target) of every relative link in markdown ``text``."""
    def blank(match):  # keep line numbers: code becomes spaces of the same shape
        return re.sub(r"[^\n]", " ", match.group(0))

    prose = CODE_SPAN.sub(blank, FENCE.sub(blank, text))
    return [(prose[:m.start()].count("\n") + 1, m.group(1)) for m in LINK.finditer(prose)
            if not URL.match(m.group(1)) and not m.group(1).startswith("#")]


def test_the_readmes_are_found():
    names = {str(p.relative_to(REPO)) for p in readme_files()}
    assert {"README.md", "workflow/README.md", "pipelines/README.md", "configs/README.md",
            "tests/README.md", "analysis/README.md"} <= names, names


def test_link_parsing():
    text = ("[a](x.md) ![b](img/p.png \"t\") [c](https://e.org/y) [d](#top) `[e](code.md)`\n"
            "```\n[f](fenced.md)\n```\n[g](../up.md#part)")
    assert relative_links(text) == [(1, "x.md"), (1, "img/p.png"), (5, "../up.md#part")]


@pytest.mark.parametrize("readme", readme_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve(readme: Path):
    broken = [f"{readme.relative_to(REPO)}:{line}: {target}"
              for line, target in relative_links(readme.read_text())
              if not (readme.parent / target.split("#")[0]).exists()]
    assert not broken, "links to nothing:\n" + "\n".join(broken)
