"""SIGINT/SIGHUP as solver requests (Caffe's SignalHandler and --sigint_effect /
--sighup_effect): the handler only records the signal; the solver asks between
iterations and test batches, so a snapshot is never taken mid-update."""
from __future__ import annotations

import signal
import threading

NONE, SNAPSHOT, STOP = 0, 1, 2
EFFECTS = {"none": NONE, "snapshot": SNAPSHOT, "stop": STOP}


class SignalRequests:
    """Handlers for SIGINT and SIGHUP while installed; `pop()` returns and clears the request."""

    def __init__(self, sigint_effect: str = "stop", sighup_effect: str = "snapshot"):
        for flag, value in (("sigint_effect", sigint_effect), ("sighup_effect", sighup_effect)):
            if value not in EFFECTS:
                raise ValueError(f"--{flag} must be one of {', '.join(EFFECTS)}, got '{value}'")
        self.effects = {signal.SIGINT: EFFECTS[sigint_effect]}
        if hasattr(signal, "SIGHUP"):
            self.effects[signal.SIGHUP] = EFFECTS[sighup_effect]
        self.pending = NONE
        self.previous = {}

    def install(self) -> None:
        """Catch the signals (main thread only; elsewhere Python cannot)."""
        if threading.current_thread() is threading.main_thread():
            for sig in self.effects:
                self.previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        self.pending = max(self.pending, self.effects[signum])

    def pop(self) -> int:
        """The strongest action requested since the last call (NONE, SNAPSHOT or STOP)."""
        action, self.pending = self.pending, NONE
        return action

    def close(self) -> None:
        """Give the previous handlers back."""
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        self.previous = {}
