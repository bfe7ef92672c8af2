"""mmengine hooks of the project."""
from __future__ import annotations

import math
import sys

from mmdet.engine.hooks.checkloss_hook import CheckInvalidLossHook
from mmengine.hooks import Hook
from mmengine.registry import HOOKS


@HOOKS.register_module()
class ProgressBarHook(Hook):
    """A tqdm bar over training iterations (on stderr; redrawn at most every few seconds
    when stderr is a log file rather than a terminal)."""

    priority = "VERY_LOW"

    def __init__(self) -> None:
        self._bar = None

    def before_train(self, runner) -> None:
        from tqdm import tqdm

        tty = sys.stderr.isatty()
        self._bar = tqdm(total=runner.max_iters, initial=runner.iter, desc="train", unit="it",
                         dynamic_ncols=True, mininterval=0.5 if tty else 10.0, leave=True)

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        if self._bar is not None:
            loss = (outputs or {}).get("loss")
            if loss is not None:
                self._bar.set_postfix(loss=f"{float(loss.detach()):.3f}", refresh=False)
            self._bar.update(1)

    def after_train(self, runner) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


class NonFiniteLossError(RuntimeError):
    """Training stopped because the loss became NaN or infinite."""


@HOOKS.register_module()
class StopOnNonFiniteLossHook(CheckInvalidLossHook):
    """Stop training with a clear reason as soon as the loss is NaN or infinite.

    mmdet's :class:`CheckInvalidLossHook` asserts with no message (its message is the
    ``None`` that ``logger.info`` returns); this one raises :class:`NonFiniteLossError` naming
    the iteration, the loss and the learning rate, so a diverged run fails at once instead of
    burning its budget, and its failure record says why.

    Args:
        interval: check every ``interval`` training iterations (1: every one).
    """

    def __init__(self, interval: int = 1) -> None:
        super().__init__(interval=interval)

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        if not self.every_n_train_iters(runner, self.interval):
            return
        loss = (outputs or {}).get("loss")
        if loss is None:
            return
        value = float(loss.detach()) if hasattr(loss, "detach") else float(loss)
        if math.isfinite(value):
            return
        try:
            lr = runner.optim_wrapper.get_lr()
            lr_text = ", lr " + ", ".join(f"{v[0]:.3g}" for v in lr.values())
        except Exception:  # noqa: BLE001 - the lr is only a hint in the message
            lr_text = ""
        raise NonFiniteLossError(f"loss is {value} at iteration {runner.iter + 1}{lr_text}; "
                                 "training stopped")


@HOOKS.register_module()
class StopAtIterationHook(Hook):
    """Stop a training after iteration ``stop_at`` of its own schedule (``max_iters`` and the
    learning-rate schedule unchanged): a rung of a multi-fidelity search. ``train --stop-at``
    adds it and checks that ``stop_at`` is a checkpoint and validation iteration, so the loop
    writes the resume checkpoint and validates there before it stops; the same training
    continues from that checkpoint later (``--stop-at`` a later rung, or none), bit-exactly
    (pipelines/stages/resume.py). A work dir already at or past ``stop_at`` trains nothing."""

    priority = "LOWEST"

    def __init__(self, stop_at: int) -> None:
        self.stop_at = int(stop_at)

    def before_train(self, runner) -> None:
        if runner.iter >= self.stop_at:
            runner.train_loop.stop_training = True

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        if runner.iter + 1 >= self.stop_at:  # runner.iter is advanced after the hooks
            runner.train_loop.stop_training = True
