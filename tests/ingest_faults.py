"""Stop an ingest part-way, at a step of writing a child (:data:`pipelines.tracking.store.STEPS`).

A spec is ``STEP[@N][:raise]``: the Nth time (default the first) ingest reaches STEP (created,
logged, artifacts, terminated, completed, retired), the process is SIGKILLed, or with
``:raise`` an ``OSError`` is raised there. In this process: :func:`stopped_at` (a context);
in a fresh interpreter, as a power cut would: :func:`run_ingest_stopped_at`.
"""
from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys

from pipelines.tracking.store import STEPS
from tests.conftest import REPO


class StopAt(logging.Handler):
    """A handler on the steps' logger that stops the process at one of them."""

    def __init__(self, spec: str):
        super().__init__(logging.DEBUG)
        where, _, self.mode = spec.partition(":")
        self.step, _, nth = where.partition("@")
        self.nth = int(nth or 1)
        self.reached = 0

    def emit(self, record: logging.LogRecord) -> None:
        if record.args[0] != self.step:
            return
        self.reached += 1
        if self.reached != self.nth:
            return
        if self.mode == "raise":
            raise OSError(f"injected fault at {self.step}")
        os.kill(os.getpid(), signal.SIGKILL)


def stop_at(spec: str) -> StopAt:
    handler = StopAt(spec)
    STEPS.addHandler(handler)
    STEPS.setLevel(logging.DEBUG)
    return handler


@contextlib.contextmanager
def stopped_at(spec: str):
    """Within the block, ingest in this process stops at ``spec``."""
    level = STEPS.level
    handler = stop_at(spec)
    try:
        yield handler
    finally:
        STEPS.removeHandler(handler)
        STEPS.setLevel(level)


def run_ingest_stopped_at(spec: str, *args: str, timeout: float = 600):
    """``python -m pipelines ingest ARGS`` in a fresh interpreter that stops at ``spec``."""
    code = ("import sys; from tests.ingest_faults import stop_at; stop_at(sys.argv[1]); "
            "from pipelines.cli import main; sys.exit(main(['ingest', *sys.argv[2:]]))")
    return subprocess.run([sys.executable, "-c", code, spec, *args], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, PYTHONWARNINGS="ignore"))
