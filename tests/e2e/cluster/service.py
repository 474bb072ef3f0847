"""What the tests' long-running helpers (Kueue, the real node) share: a ``with`` block that starts them and
always stops them (a half-started one included), and ending a process politely, then firmly."""

from __future__ import annotations

import subprocess
from typing import Any


def end(proc: subprocess.Popen[Any] | None, grace: float = 20.0) -> None:
    """SIGTERM the process, SIGKILL it if it is still there after ``grace`` seconds, and reap it."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class Service:
    """A helper with ``start`` and ``stop``: ``with`` starts it, and stops it on the way out, also when
    ``start`` itself failed half-way (whatever it had started goes too)."""

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Service:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
