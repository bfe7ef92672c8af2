"""A large DAG built faster (pipelines.snakemake_speed)."""
from __future__ import annotations

import functools
import gc
import inspect
import weakref

import snakemake.common
import snakemake.jobs
import snakemake.rules

from pipelines import snakemake_speed as sig


def counting():
    """Snakemake's own get_function_params (unwrapped), counting its calls."""
    current = snakemake.common.get_function_params
    snakemakes = getattr(current, "memoises", current)
    calls = []

    def original(func):
        calls.append(func)
        return snakemakes(func)

    return original, calls


def test_a_function_is_inspected_once_and_answers_as_inspect_does():
    original, calls = counting()
    get = sig.memoised(original)

    def input_function(wildcards, input, attempt):
        return []

    for _ in range(5):
        params = get(input_function)
    assert list(params) == ["wildcards", "input", "attempt"]
    assert params == inspect.signature(input_function).parameters
    assert len(calls) == 1


def test_bound_methods_share_their_function_and_drop_self():
    original, calls = counting()
    get = sig.memoised(original)

    class Resource:
        def evaluate(self, wildcards, **aux):
            return 1

    a, b = Resource(), Resource()
    assert list(get(a.evaluate)) == ["wildcards", "aux"]
    assert get(b.evaluate) is get(a.evaluate)
    assert len(calls) == 1


def test_partials_and_snakemake_overrides_are_read_every_time():
    original, calls = counting()
    get = sig.memoised(original)

    def f(wildcards, input):
        return []

    part = functools.partial(f)
    get(part), get(part)
    assert len(calls) == 2

    def g(*args):
        return []

    snakemake.common.overwrite_function_params(g, ["wildcards"])
    assert get(g) == ["wildcards"]
    snakemake.common.overwrite_function_params(g, ["wildcards", "input"])
    assert get(g) == ["wildcards", "input"]  # not the first answer


def test_the_memo_does_not_keep_a_function_alive():
    get = sig.memoised(lambda func: inspect.signature(func).parameters)

    def make():
        def per_call(wildcards):
            return []
        return per_call

    func = make()
    get(func)
    ref = weakref.ref(func)
    del func
    gc.collect()
    assert ref() is None


def test_install_wraps_every_module_once():
    assert sig.read_signatures_once()
    wrapped = snakemake.common.get_function_params
    assert hasattr(wrapped, "memoises")
    assert snakemake.rules.get_function_params is wrapped
    assert snakemake.jobs.get_function_params is wrapped
    assert sig.read_signatures_once()  # again: the same wrapper, not a wrapper of the wrapper
    assert snakemake.common.get_function_params is wrapped
    assert not hasattr(wrapped.memoises, "memoises")


def test_gc_thresholds_are_raised_never_lowered():
    import gc

    before = gc.get_threshold()
    try:
        gc.set_threshold(700, 10, 10)
        sig.fewer_gc_passes()
        assert gc.get_threshold() == sig.GC_THRESHOLDS
        gc.set_threshold(10 ** 6, 10, 1000)
        sig.fewer_gc_passes()
        assert gc.get_threshold() == (10 ** 6, 20, 1000)
        assert gc.isenabled()
    finally:
        gc.set_threshold(*before)
