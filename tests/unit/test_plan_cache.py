"""The cache of an expanded grid (pipelines/grid/plan_cache.py): a start whose inputs are unchanged
loads the saved runs (equal to a fresh expansion); a changed config, model config file,
dataset folder or cache entry is a new expansion; a failed expansion is never saved."""
from __future__ import annotations

import copy
import shutil

import pytest
import yaml

from pipelines.errors import UserError
from pipelines.grid import expand_grid, plan_cache, validate_ablation
from tests.conftest import REPO


@pytest.fixture
def ablation(tmp_path):
    """The demo ablation with its baseline's model config copied into tmp_path."""
    config = yaml.safe_load((REPO / "configs/ablations/demo.yaml").read_text())
    model = tmp_path / "model.py"
    shutil.copy(REPO / config["grid"]["variants"]["baseline"]["config"], model)
    config["grid"]["variants"] = {"baseline": {"config": str(model)}}
    config["grid"]["seed"] = [0, 1]
    return validate_ablation(config), model


def test_hit_equals_fresh_expansion_and_changes_miss(ablation, tmp_path):
    config, model = ablation
    folder = tmp_path / "plans"
    first, hit = plan_cache.cached_expand(config, REPO, folder)
    assert not hit and first == expand_grid(copy.deepcopy(config), repo=REPO)
    again, hit = plan_cache.cached_expand(config, REPO, folder)
    assert hit and again == first
    # the model config the expansion read: its content is part of the key
    model.write_text(model.read_text() + "\nmax_iters = 301\n")
    changed, hit = plan_cache.cached_expand(config, REPO, folder)
    assert not hit and changed == expand_grid(copy.deepcopy(config), repo=REPO)
    assert plan_cache.cached_expand(config, REPO, folder)[1]
    # the ablation config
    other = copy.deepcopy(config)
    other["grid"]["seed"] = [0, 1, 2]
    runs, hit = plan_cache.cached_expand(other, REPO, folder)
    assert not hit and len(runs) == 3


def test_user_dataset_folder_listing_is_in_the_key(ablation, tmp_path):
    config, _ = ablation
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.txt").write_text("x")
    config = copy.deepcopy(config)
    config["data"] = {"root": str(data), "synthetic": None}
    key = plan_cache.static_key(config, REPO)
    assert plan_cache.static_key(config, REPO) == key
    (data / "b.txt").write_text("y")
    assert plan_cache.static_key(config, REPO) != key


def test_damaged_entry_is_expanded_again(ablation, tmp_path):
    config, _ = ablation
    folder = tmp_path / "plans"
    runs, _ = plan_cache.cached_expand(config, REPO, folder)
    (entry,) = folder.glob("*.pkl")
    entry.write_bytes(b"not a pickle")
    again, hit = plan_cache.cached_expand(config, REPO, folder)
    assert not hit and again == runs
    assert plan_cache.cached_expand(config, REPO, folder)[1]


def test_failed_expansion_is_not_saved(ablation, tmp_path):
    config, _ = ablation
    config = copy.deepcopy(config)
    config["grid"]["variants"]["baseline"]["axes"] = {"no.such.key": [1]}
    folder = tmp_path / "plans"
    for _ in range(2):
        with pytest.raises(UserError):
            plan_cache.cached_expand(config, REPO, folder)
    assert not list(folder.glob("*.pkl"))


def test_derived_values_are_saved_and_keyed_by_their_code(ablation, tmp_path):
    config, _ = ablation
    folder, code = tmp_path / "plans", tmp_path / "rules.smk"
    code.write_text("# derive v1\n")

    def ids(runs):
        return [run.run_id for run in runs]

    (runs, derived), hit = plan_cache.cached_expand(config, REPO, folder, derive=ids,
                                                    code_files=[code])
    assert not hit and derived == ids(runs) and len(runs) == 2
    assert plan_cache.cached_expand(config, REPO, folder, derive=ids, code_files=[code]) == (
        (runs, derived), True)
    code.write_text("# derive v2\n")
    assert not plan_cache.cached_expand(config, REPO, folder, derive=ids,
                                        code_files=[code])[1]
