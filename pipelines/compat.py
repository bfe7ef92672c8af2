"""Known traps of the pinned OpenMMLab stack, each handled narrowly in one place.

1. **torch >= 2.6 loads checkpoints with ``weights_only=True``.** mmengine 0.10.7 saves its
   resume state (message hub, ``HistoryBuffer`` objects, numpy scalars and arrays) into the
   checkpoint and then cannot load it again, so ``resume`` breaks. The worst offender is
   ``HistoryBuffer.__getstate__``, which pickles its class-level table of statistics
   *functions* (``getattr(HistoryBuffer, 'mean')``): allowing ``builtins.getattr`` would open
   the door to arbitrary code. We do *not* switch ``weights_only`` off. Instead, narrowly:
   :func:`patch_history_buffer_pickling` makes the checkpoints this project writes hold only
   data (the table is rebuilt from the class on load, as mmengine's own ``__setstate__``
   already does), and :func:`allow_mmengine_checkpoints` adds exactly the data types such a
   checkpoint holds to torch's safe-globals allowlist. Checkpoints written by an unpatched
   mmengine elsewhere still need ``weights_only=False`` by the user's own decision, and any
   other pickled global (the way a malicious file runs code) is still refused.
2. **numpy 2.** mmengine's ``HistoryBuffer`` and mmseg's metrics are fine, but numpy 2 moved
   the pickled location of arrays (``numpy._core``), so a checkpoint written under numpy 2
   names ``numpy._core.multiarray._reconstruct`` and one written under numpy 1 names
   ``numpy.core.multiarray._reconstruct``; both are allowlisted (the numpy-1 name resolves
   through numpy 2's compatibility alias).
3. **Version asserts.** mmseg 1.2.2 and mmdet 3.3.0 ``assert mmcv < 2.2.0`` at import time,
   which surfaces as a bare AssertionError deep in an import. :func:`check_versions` reads the
   installed versions first and reports a mismatch as one line.
4. mmengine 0.10.7 imports ``pkg_resources``; setuptools is pinned below 81 and its
   deprecation warning is silenced here.
"""
from __future__ import annotations

import importlib.metadata as md
import warnings

from pipelines.errors import UserError

# The versions this project is pinned to and the ranges the libraries themselves assert.
REQUIRED = {
    "mmcv": ("2.0.0rc4", "2.2.0"),  # mmseg 1.2.2 and mmdet 3.3.0: 2.0.0rc4 <= mmcv < 2.2.0
    "mmengine": ("0.5.0", "1.0.0"),
    "mmdet": ("3.0.0", "3.4.0"),  # mmseg's Mask2Former wraps mmdet 3.x heads
}

_applied = False


def silence_known_warnings() -> None:
    warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)
    # mmengine's own checkpoint loader calls torch.load without weights_only; torch warns
    warnings.filterwarnings("ignore", message=".*You are using `torch.load` with `weights_only",
                            category=FutureWarning)


def installed_version(dist: str) -> str | None:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


def check_versions(installed: dict[str, str | None] | None = None) -> None:
    """Raise :class:`UserError` naming the first package outside the range mmseg/mmdet accept."""
    from packaging.version import Version

    installed = installed or {name: installed_version(name) for name in REQUIRED}
    for name, (low, high) in REQUIRED.items():
        have = installed.get(name)
        if have is None:
            raise UserError(f"{name} is not installed; run `make setup` (workflow/scripts/install.sh)")
        if not Version(low) <= Version(have) < Version(high):
            raise UserError(f"{name} {have} is installed but mmseg 1.2.2 / mmdet 3.3.0 need "
                            f"{low} <= {name} < {high}; run `make setup` to install the pins")


def mmengine_checkpoint_globals() -> list:
    """The globals an mmengine checkpoint pickles besides tensors."""
    import numpy as np
    from mmengine.logging.history_buffer import HistoryBuffer

    scalar_types = [np.float64, np.float32, np.float16, np.int64, np.int32, np.int16, np.int8,
                    np.uint8, np.bool_]
    dtype_classes = [type(np.dtype(t)) for t in scalar_types]
    reconstructs = [np._core.multiarray._reconstruct, np._core.multiarray.scalar]
    # numpy-1 spellings of the same functions, for checkpoints written under numpy < 2
    numpy1_names = [(f, f"numpy.core.multiarray.{f.__name__}") for f in reconstructs]
    return [HistoryBuffer, np.ndarray, np.dtype, *dtype_classes, *scalar_types, *reconstructs,
            *numpy1_names]


def patch_history_buffer_pickling() -> None:
    """Pickle ``HistoryBuffer`` without its statistics-function table (see the module doc)."""
    from mmengine.logging.history_buffer import HistoryBuffer

    if getattr(HistoryBuffer.__getstate__, "_pipelines_patched", False):
        return

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state.pop("statistics_methods", None)
        return state

    __getstate__._pipelines_patched = True
    HistoryBuffer.__getstate__ = __getstate__


def allow_mmengine_checkpoints() -> None:
    import torch

    torch.serialization.add_safe_globals(mmengine_checkpoint_globals())


def apply() -> None:
    """Apply every fix once per process (imported by :mod:`pipelines.registry`)."""
    global _applied
    if _applied:
        return
    silence_known_warnings()
    check_versions()
    patch_history_buffer_pickling()
    allow_mmengine_checkpoints()
    _applied = True
