"""Building mmengine's Runner so that a config mistake is one line, not a traceback."""
from __future__ import annotations

import pickle
import traceback
from pathlib import Path

from pipelines.errors import UserError

# what mmengine's builders raise for a bad config value or an unknown type
CONFIG_ERRORS = (KeyError, AssertionError, TypeError, ValueError)
# what torch.load raises for a truncated, foreign or corrupt checkpoint (the weights-only
# unpickler reads a text file's bytes as opcodes: a file holding `hello` is a KeyError)
CHECKPOINT_ERRORS = (pickle.UnpicklingError, EOFError, RuntimeError, KeyError, IndexError,
                     ValueError, TypeError, AttributeError)


def _summary(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}".strip()


def config_error(err: BaseException, work_dir: str | Path, stage: str) -> UserError:
    """Save the traceback in ``work_dir/error.log`` and return a one-line UserError."""
    log = Path(work_dir) / "error.log"
    try:
        log.write_text("".join(traceback.format_exception(err)))
        where = f" (traceback in {log})"
    except OSError:
        where = ""
    return UserError(f"cannot {stage} from this config: {_summary(err)}{where}")


def build_runner(cfg):
    from mmengine.runner import Runner

    import pipelines.registry  # noqa: F401

    try:
        return Runner.from_cfg(cfg)
    except CONFIG_ERRORS as err:
        raise config_error(err, cfg.work_dir, "build the model") from None


def _from_checkpoint_loading(err: BaseException) -> bool:
    frames = traceback.extract_tb(err.__traceback__)
    return any(f.name in ("load_or_resume", "load_checkpoint", "_load_checkpoint", "resume")
               for f in frames)


def run_loop(runner, loop: str):
    """``runner.train()`` / ``runner.test()`` where a config or checkpoint mistake is one line.

    The loops (and with them datasets, transforms and evaluators, where config values are
    checked) are built first, so a bad value surfaces before any work; an error raised while
    loading a checkpoint is reported as such. Anything later is a real failure and keeps its
    traceback.
    """
    try:
        getattr(runner, f"{loop}_loop")
        if loop == "train" and runner._val_loop is not None:
            runner.val_loop
    except CONFIG_ERRORS as err:
        raise config_error(err, runner.work_dir, loop) from None
    try:
        return getattr(runner, loop)()
    except CHECKPOINT_ERRORS as err:
        if not _from_checkpoint_loading(err):
            raise
        raise config_error(err, runner.work_dir, f"{loop} (loading the checkpoint failed)") \
            from None
