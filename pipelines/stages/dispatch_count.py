"""Count the ATen ops a forward dispatches, on the CPU: the GPU guards that run without a GPU.

On a GPU a forward is fast when it launches few kernels and never waits for the device. Two
things break that and both are visible on the CPU, op by op, through a
``torch.utils._python_dispatch.TorchDispatchMode``:

* **host-device syncs**: ops whose result the host must read (``.item()``, ``int(t)``,
  ``bool(t)``, ``.tolist()`` -> ``aten::_local_scalar_dense``; ``nonzero``, ``unique`` and
  boolean-mask indexing, whose output size depends on the data). Each blocks the CPU until the
  GPU has finished everything queued before it.
* **per-image Python loops**: the number of dispatched ops grows with the batch size.

Usage::

    with DispatchCounter() as counter:
        model(x)
    counter.total, counter.syncs, counter.counts   # ops, {sync op: n}, {op: n}

:func:`count_forward` runs a module under ``torch.no_grad`` / eval at several batch sizes.
"""
from __future__ import annotations

from collections import Counter
from typing import Callable, Dict, Iterable

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

#: ops whose output the host must read back (a device sync on CUDA): a scalar to Python, or an
#: output whose size depends on the data
SYNC_OPS = frozenset({
    "aten::_local_scalar_dense",  # .item(), int(t), float(t), bool(t), .tolist() per element
    "aten::item",
    "aten::is_nonzero",
    "aten::nonzero", "aten::nonzero_static",
    "aten::masked_select",
    "aten::_unique", "aten::_unique2", "aten::unique_dim", "aten::unique_consecutive",
    "aten::repeat_interleave",
})

#: Tensor methods that read the data back to Python without dispatching an ATen op (invisible to
#: the dispatch mode; counted at the torch-function level)
SYNC_METHODS = frozenset({"tolist"})

#: ops that are a sync only when their index is a boolean mask (data-dependent output size)
MASK_INDEX_OPS = frozenset({"aten::index", "aten::index_put", "aten::index_put_"})


def op_name(func) -> str:
    """``aten::add`` for ``torch.ops.aten.add.Tensor``."""
    return func._schema.name


def _has_bool_index(args) -> bool:
    for a in args:
        if isinstance(a, (list, tuple)):
            if any(isinstance(t, torch.Tensor) and t.dtype in (torch.bool, torch.uint8)
                   for t in a):
                return True
    return False


class _MethodCounter(TorchFunctionMode):
    """Counts the Tensor methods of :data:`SYNC_METHODS` (``.tolist()``)."""

    def __init__(self, syncs: Counter) -> None:
        super().__init__()
        self.syncs = syncs

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in SYNC_METHODS:
            self.syncs["Tensor." + name] += 1
        return func(*args, **(kwargs or {}))


class DispatchCounter(TorchDispatchMode):
    """Counts every ATen op dispatched inside it; ``syncs`` holds the host-sync ones.

    Attributes:
        counts: ``{op name: calls}`` of every op.
        syncs: ``{op name: calls}`` of the ops in :data:`SYNC_OPS`, plus
            ``'aten::index[bool mask]'`` for boolean-mask indexing and ``'Tensor.tolist'``
            (``.tolist()`` reads the data without dispatching an op; a function mode counts it).
    """

    def __init__(self) -> None:
        super().__init__()
        self.counts: Counter = Counter()
        self.syncs: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = op_name(func)
        self.counts[name] += 1
        if name in SYNC_OPS:
            self.syncs[name] += 1
        elif name in MASK_INDEX_OPS and _has_bool_index(args[1:2]):
            self.syncs[name + "[bool mask]"] += 1
        return func(*args, **(kwargs or {}))

    def __enter__(self):
        self._methods = _MethodCounter(self.syncs)
        self._methods.__enter__()
        return super().__enter__()

    def __exit__(self, *exc):
        try:
            return super().__exit__(*exc)
        finally:
            self._methods.__exit__(*exc)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def num_syncs(self) -> int:
        return sum(self.syncs.values())


def count_call(fn: Callable[[], object]) -> DispatchCounter:
    """Run ``fn()`` under ``torch.no_grad`` inside a :class:`DispatchCounter`; returns it."""
    with torch.no_grad(), DispatchCounter() as counter:
        fn()
    return counter


def count_forward(make_input: Callable[[int], object], forward: Callable[[object], object],
                  batches: Iterable[int] = (1, 8)) -> Dict[int, DispatchCounter]:
    """``{batch: counter}`` of ``forward(make_input(batch))`` for every batch size (one untimed
    call first per batch, so lazily built caches do not count)."""
    out = {}
    for b in batches:
        x = make_input(b)
        with torch.no_grad():
            forward(x)
        out[b] = count_call(lambda: forward(x))
    return out


def summary(counters: Dict[int, DispatchCounter]) -> str:
    """One line per batch: total ops and the sync ops."""
    return "; ".join(f"batch {b}: {c.total} ops, {c.num_syncs} syncs {dict(c.syncs)}"
                     for b, c in counters.items())
