"""Chaos for the real control plane: SIGKILL the operator, kube-apiserver, etcd, kube-controller-manager
and kube-scheduler at random moments while experiments run, each brought back after a short outage (the
way a crash-looping or rescheduled control plane behaves). Shared by the chaos test and the bench."""

from __future__ import annotations

import random
import threading
import time
from typing import Any

from tests.e2e.cluster.controlplane import ControlPlane

COMPONENTS = ("operator", "kube-apiserver", "etcd", "kube-controller-manager", "kube-scheduler")


class Chaos(threading.Thread):
    """Kills a randomly chosen component every ``gap`` seconds (uniform), ``kills`` times or until stopped;
    ``done`` lists (seconds since start, component) of every kill, ``errors`` what went wrong bringing one
    back."""

    def __init__(self, cp: ControlPlane, operator: Any, kills: int, seed: int = 0,
                 gap: tuple[float, float] = (1.0, 4.0), outage: tuple[float, float] = (0.0, 2.0)) -> None:
        super().__init__(name="chaos", daemon=True)
        self.cp, self.operator, self.kills = cp, operator, kills
        self.rng = random.Random(seed)
        self.gap, self.outage = gap, outage
        self.done: list[tuple[float, str]] = []
        self.errors: list[str] = []
        self._halt = threading.Event()

    def run(self) -> None:
        t0 = time.monotonic()
        while len(self.done) < self.kills and not self._halt.wait(self.rng.uniform(*self.gap)):
            name = self.rng.choice(COMPONENTS)
            down = self.rng.uniform(*self.outage)
            try:
                if name == "operator":
                    self.operator.proc.kill()
                    self.operator.proc.wait()
                    time.sleep(down)
                    self.operator.restart()
                else:
                    self.cp.restart(name, while_down=lambda d=down: time.sleep(d))
            except Exception as err:  # reported by the caller, which fails on it
                self.errors.append(f"{name}: {err!r}")
                return
            self.done.append((round(time.monotonic() - t0, 1), name))

    def stop(self) -> None:
        self._halt.set()
        self.join(180)
