"""Ctrl-C that no library can swallow.

A KeyboardInterrupt raised inside a call into an environment's JVM can be lost in py4j's own
handling, and the command would then go on to finish as if nothing happened. The CLI latches
every Ctrl-C, and an output is never committed after one: the command still stops with
"interrupted" and writes nothing.
"""

from __future__ import annotations

import signal
import sys
import threading
from typing import Any

_seen = threading.Event()


def _on_sigint(signum: int, frame: object) -> None:
    _seen.set()
    signal.default_int_handler(signum, frame)  # raises KeyboardInterrupt where the program is


def _latching(previous: Any) -> Any:
    def hook(unraisable: Any) -> None:
        # a Ctrl-C that lands in a finalizer (py4j's JavaObject cleanup, run by the garbage collector)
        # cannot propagate; Python would print it with a traceback. It is latched: the command still
        # stops at its next check and says "interrupted" once
        if isinstance(unraisable.exc_value, KeyboardInterrupt):
            _seen.set()
            return
        previous(unraisable)
    return hook


def latch() -> None:
    """Remember every Ctrl-C from now on, where Ctrl-C is handled as usual (a run started with it
    ignored, in the background, keeps ignoring it)."""
    if threading.current_thread() is threading.main_thread() \
            and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _on_sigint)
        sys.unraisablehook = _latching(sys.unraisablehook)  # whatever hook was set before still sees the rest


def check() -> None:
    """KeyboardInterrupt when a Ctrl-C came, even if the code it landed in swallowed it."""
    if _seen.is_set():
        raise KeyboardInterrupt
