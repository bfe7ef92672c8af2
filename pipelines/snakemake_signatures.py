"""Snakemake reads each rule function's signature once per function, not once per call.

Building and listing a DAG, Snakemake calls every input, params and resources function of
every job through ``apply_input_function``, which asks ``inspect.signature`` for the function's
parameters two or three times per call (``snakemake.common.get_function_params``: does it take
``groupid``? which of ``input``, ``attempt``, ``threads``... does it take?). A signature does not
change between calls, yet at 10,000 runs these lookups were the largest single cost of
``snakemake -n`` we could act on: 192,000 calls and about 14 % of a profiled 3,000-run dry run.

:func:`install` wraps ``get_function_params`` where Snakemake 9 looks it up (``snakemake.common``,
``snakemake.rules``, ``snakemake.jobs``) with a memo per function: a plain function by itself, a
bound method by its underlying function (its signature does not depend on the instance). What
Snakemake sees is what ``inspect.signature(func).parameters`` returned the first time; anything
else (a ``functools.partial``, a callable object, a function with Snakemake's own
``_overwrite_params``) goes to Snakemake's function unchanged. The memo holds its functions
weakly, so a function made per call is not kept alive by it.
"""
from __future__ import annotations

import importlib
import types
import weakref

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


def install() -> bool:
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
