"""The README's results tables are what ``python -m pipelines.reports.readme_tables`` builds from the
recorded tables in ``tests/data/``: a changed recording, a changed analysis or a hand-edited
number fails here."""
from __future__ import annotations

import pytest

from pipelines.reports import readme_tables as rt


def test_the_demo_table_is_the_recordings():
    """Settings, intervals, verdicts and ranking stability of ``runs_demo.csv`` (fast)."""
    text = rt.README.read_text()
    assert rt.readme_block(text, "demo") == rt.demo_table()


def test_check_names_a_table_that_drifted(tmp_path, capsys):
    readme = tmp_path / "README.md"
    text = rt.README.read_text()
    block = rt.readme_block(text, "demo")
    changed = block.replace("| 3 |", "| 4 |", 1)
    assert changed != block
    readme.write_text(text.replace(block, changed))
    assert rt.main(["--check", "--only", "demo", "--readme", str(readme)]) == 1
    assert "table demo differs" in capsys.readouterr().err
    assert rt.main(["--only", "demo", "--readme", str(readme)]) == 0  # rewritten
    assert rt.main(["--check", "--only", "demo", "--readme", str(readme)]) == 0
    assert readme.read_text() == text


@pytest.mark.slow
def test_the_search_replay_table_is_the_recordings():
    """The benchmark's four samplers at 20 replay seeds on ``grid_lr.csv`` (the GP sampler makes
    this slow: about a minute)."""
    assert rt.readme_block(rt.README.read_text(), "search_replay") == rt.replay_table()
