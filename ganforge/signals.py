"""SIGINT and SIGTERM during training: stop after the step, checkpointed."""
from __future__ import annotations

import signal
import sys
import threading


class StopSignals:
    """SIGINT/SIGTERM: the first asks the loop to finish its step and checkpoint; a second
    SIGINT stops at once (KeyboardInterrupt). Checkpoint writes are atomic, so nothing is corrupted."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signum, self.previous = None, {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self.previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def _handle(self, signum, frame):
        if self.signum is not None:
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            return
        self.signum = signum
        print(f"\n{signal.Signals(signum).name}: stopping after this step (Ctrl-C again to quit at once)",
              file=sys.stderr, flush=True)

    def __exit__(self, *exc):
        for s, handler in self.previous.items():
            signal.signal(s, handler)
