"""The READMEs' results tables are what ``python -m pipelines.benchmarks.readme_tables`` builds from the
recorded tables in ``tests/data/``: a changed recording, a changed analysis or a hand-edited
number fails here. The tables live in several markdown files (``readme_tables.DOCS``), each in
exactly one."""
from __future__ import annotations

import pytest

from pipelines.benchmarks import readme_tables as rt


def test_each_table_lives_in_one_of_the_docs():
    texts = {path: path.read_text() for path in rt.DOCS}
    homes = {name: rt.table_file(name, texts) for name in rt.TABLES}
    assert homes == {"demo": rt.README, "search_replay": rt.REPO / "configs" / "README.md"}


def test_the_demo_table_is_the_recordings():
    """Settings, intervals, verdicts and ranking stability of ``runs_demo.csv`` (fast)."""
    assert rt.table_text("demo") == rt.demo_table()


def test_check_names_a_table_that_drifted(tmp_path, capsys):
    readme = tmp_path / "README.md"
    text = rt.README.read_text()
    block = rt.readme_block(text, "demo")
    changed = block.replace("| 3 |", "| 4 |", 1)
    assert changed != block
    readme.write_text(text.replace(block, changed))
    assert rt.main(["--check", "--only", "demo", "--files", str(readme)]) == 1
    assert f"{readme}: table demo differs" in capsys.readouterr().err
    assert rt.main(["--only", "demo", "--files", str(readme)]) == 0  # rewritten
    assert rt.main(["--check", "--only", "demo", "--files", str(readme)]) == 0
    assert readme.read_text() == text


def test_tables_in_several_files_are_each_rewritten_where_they_live(tmp_path, capsys):
    """Two files, the drifted table in the second: --check names that file, a rewrite changes
    it alone, and the first file is left byte for byte."""
    first, second = tmp_path / "README.md", tmp_path / "other.md"
    demo = "intro\n\n<!-- table:demo -->\n" + rt.demo_table() + "\n<!-- /table:demo -->\n"
    first.write_text("no table here\n")
    second.write_text(demo.replace("| 3 |", "| 5 |", 1))
    files = ["--files", str(first), str(second), "--only", "demo"]
    assert rt.main(["--check", *files]) == 1
    assert f"{second}: table demo differs" in capsys.readouterr().err
    assert rt.main(files) == 0
    assert second.read_text() == demo
    assert first.read_text() == "no table here\n"
    assert rt.main(["--check", *files]) == 0


def test_a_table_in_no_file_or_in_two_is_one_line(tmp_path, capsys):
    a, b = tmp_path / "a.md", tmp_path / "b.md"
    a.write_text("nothing\n")
    b.write_text("nothing either\n")
    assert rt.main(["--check", "--only", "demo", "--files", str(a), str(b)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: table demo must be in exactly one file, found in none of ")
    assert len(err.strip().splitlines()) == 1
    marked = "<!-- table:demo -->\nold\n<!-- /table:demo -->\n"
    a.write_text(marked)
    b.write_text(marked)
    assert rt.main(["--check", "--only", "demo", "--files", str(a), str(b)]) == 2
    assert f"found in {a} and {b}" in capsys.readouterr().err
    assert rt.main(["--check", "--only", "demo", "--files", str(tmp_path / "missing.md")]) == 2
    assert "cannot read" in capsys.readouterr().err


@pytest.mark.slow
def test_the_search_replay_table_is_the_recordings():
    """The benchmark's four samplers at 20 replay seeds on ``grid_lr.csv`` (the GP sampler makes
    this slow: about a minute)."""
    assert rt.table_text("search_replay") == rt.replay_table()
