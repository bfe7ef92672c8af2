"""A resumed training equals an uninterrupted one: every random state travels in the checkpoint.

mmengine 0.10.7's resume restores the weights, the optimizer, the LR schedulers, the message
hub and the iteration, and fast-forwards the data iterator by loading (and dropping) as many
batches as were trained. It does not restore the random states of the main process: the
global torch generator (Mask2Former's point sampling draws from it every iteration), numpy's
and Python's (the data transforms draw from them when ``num_workers=0``). After a resume they
are wherever model initialisation and the fast-forward left them, so the first step after the
resume already differs.

:class:`ExactResumeHook` (added to every training by ``pipelines/stages/train.py``):

* ``before_save_checkpoint``: stores the torch (and CUDA), numpy and Python random states in
  the checkpoint (``rng_state``; plain lists and tensors, loadable with ``weights_only=True``),
  with the number of batches drawn so far.
* ``after_load_checkpoint`` + ``before_train_epoch``: on a resume, lets mmengine fast-forward
  the data iterator as it does (the sampler's position, its seeded shuffle and the data
  workers' own seeded random streams are replayed by that: the same batches pass through the
  same workers in the same order) and restores the saved states right after the fast-forward,
  before the first new batch is drawn. The first new batch, its augmentation and every later
  step then draw exactly what the uninterrupted run drew.
* ``before_val`` / ``after_val``: validation during training leaves the random states as it
  found them (creating the validation data iterator draws a seed from the torch generator), so
  a checkpoint written at a validation iteration holds the states the next step starts from.
  The loop validates after writing that checkpoint, so a resume from it validates again first
  (the kill may have cut that validation short; its metrics and best checkpoint count).

What stays inexact, by design: a DDP launch (only rank 0 writes the checkpoint, so the other
ranks' states are not saved; they resume as mmengine does), a config without
``randomness.seed`` (mmengine draws a new seed for the sampler and the workers at every start),
GPU kernels that are not deterministic, and checkpoints written before this hook existed
(resumed as before, with a warning).
"""
from __future__ import annotations

import itertools
import random

from mmengine.hooks import Hook
from mmengine.registry import HOOKS

KEY = "rng_state"


def capture() -> dict:
    """The random states of this process: torch (CPU and every CUDA device), numpy, Python."""
    import numpy as np
    import torch

    kind, key, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state = {"torch": torch.get_rng_state(),
             "numpy": {"kind": kind, "key": key.tolist(), "pos": int(pos),
                       "has_gauss": int(has_gauss), "gauss": float(gauss)},
             "python": {"version": version, "internal": list(internal),
                        "gauss_next": gauss_next}}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore(state: dict) -> None:
    """Put back what :func:`capture` returned."""
    import numpy as np
    import torch

    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], np.asarray(n["key"], dtype=np.uint32), n["pos"],
                         n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class _RestoreAfterFastForward:
    """Stands in for the train loop's data iterator during mmengine's fast-forward: after
    ``skip`` batches it restores ``state`` (once), puts the real iterator back and goes on."""

    def __init__(self, loop, skip: int, state: dict) -> None:
        self._loop, self._inner = loop, loop.dataloader_iterator
        self._skip, self._state = skip, state

    def __iter__(self):
        return self

    def __next__(self):
        if self._skip > 0:
            self._skip -= 1
            return next(self._inner)
        restore(self._state)
        self._loop.dataloader_iterator = self._inner
        return next(self._inner)


@HOOKS.register_module()
class ExactResumeHook(Hook):
    """Save every random state in each checkpoint; restore it exactly on resume (module doc).

    Args:
        resume: whether this training resumes (the config's ``resume``); a ``load_from``
            fine-tuning loads weights only and keeps its fresh random states.
    """

    priority = "VERY_HIGH"

    def __init__(self, resume: bool = True) -> None:
        self.resume = bool(resume)
        self._pending: dict | None = None
        self._resumed = False
        self._val_state: dict | None = None

    # saving -----------------------------------------------------------------------------
    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        if "optimizer" not in checkpoint:  # a weights-only file (best, final): nothing resumes
            return
        checkpoint[KEY] = {"iter": int(checkpoint["meta"]["iter"]), **capture()}

    # resuming ---------------------------------------------------------------------------
    def after_load_checkpoint(self, runner, checkpoint) -> None:
        check_loadable(checkpoint, self.resume)
        if not self.resume:
            return
        meta_iter = checkpoint["meta"]["iter"]
        if checkpoint["meta"].get("final") and meta_iter < runner.max_iters:
            from pipelines.errors import UserError

            raise UserError(
                f"the training in {runner.work_dir} finished at iteration {meta_iter} and kept "
                "its weights only (no optimizer state), so it cannot continue to "
                f"{runner.max_iters}: fine-tune from it in a new work dir (load_from=...)")
        self._pending, self._resumed = checkpoint.get(KEY), True

    def before_train_epoch(self, runner) -> None:
        state, self._pending = self._pending, None
        resumed, self._resumed = self._resumed, False
        if not resumed or runner.iter == 0:
            return
        from mmengine.runner import IterBasedTrainLoop

        from pipelines.stages import launch

        loop = runner.train_loop
        if runner.iter >= runner.max_iters:
            if isinstance(loop, IterBasedTrainLoop):
                # a finished training run again: nothing to train, nothing to fast-forward
                loop.dataloader_iterator = itertools.repeat(None)
            return
        if isinstance(loop, IterBasedTrainLoop):
            redo_interrupted_validation(runner, loop)
        reason = None
        if state is None:
            reason = "the checkpoint holds no random states (written before they were saved)"
        elif state["iter"] != runner.iter:
            reason = f"its random states are of iteration {state['iter']}, not {runner.iter}"
        elif launch.world_size() > 1:
            reason = "a distributed launch saves rank 0's random states only"
        if reason is not None:
            runner.logger.warning(f"resume is not bit-exact: {reason}")
            return
        if isinstance(loop, IterBasedTrainLoop):
            # mmengine draws `iter` batches next to fast-forward; restore after them
            loop.dataloader_iterator = _RestoreAfterFastForward(loop, runner.iter, state)
        else:  # epoch-based: the epoch's data iterator is created after this hook
            restore(state)
        runner.logger.info(f"restored the random states of iteration {runner.iter}")

    # validation inside training -----------------------------------------------------------
    def before_val(self, runner) -> None:
        self._val_state = capture()

    def after_val(self, runner) -> None:
        if self._val_state is not None:
            restore(self._val_state)
            self._val_state = None


def redo_interrupted_validation(runner, loop) -> None:
    """Validate now if the uninterrupted run validated at the resume iteration.

    The loop validates after the checkpoint of that iteration is written, so a kill during
    that validation loses it and mmengine's resume goes on past it: its metrics (and a best
    checkpoint chosen from them) would be missing. Validation leaves the random states alone
    (``before_val``/``after_val``), so running it again changes nothing else.
    """
    step = runner.iter
    loop._decide_current_val_interval()
    if runner.val_loop is not None and step >= loop.val_begin and step % loop.val_interval == 0:
        runner.logger.info(f"validating again at iteration {step} (the resumed checkpoint's "
                           "validation may not have finished)")
        runner.val_loop.run()


def check_loadable(checkpoint, resume: bool) -> None:
    """Refuse, in one line, a file that is not a checkpoint ``train`` can start from."""
    from pipelines.errors import UserError

    if not isinstance(checkpoint, dict):
        raise UserError(f"the checkpoint holds a {type(checkpoint).__name__}, not a "
                        "checkpoint (a dict of weights)")
    if not resume:
        return  # load_from: mmengine takes `state_dict` or a plain dict of weights
    missing = [k for k in ("meta", "state_dict", "message_hub") if k not in checkpoint]
    meta = checkpoint.get("meta")
    if not missing and not (isinstance(meta, dict) and isinstance(meta.get("iter"), int)):
        missing = ["meta.iter"]
    if missing:
        raise UserError("cannot resume from the work dir's last checkpoint: it lacks "
                        f"{', '.join(missing)} (not a checkpoint written by `train`); delete "
                        "it or its `last_checkpoint` marker to start over")
