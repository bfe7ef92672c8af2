"""mmengine hooks of the project."""
from __future__ import annotations

import sys

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
