"""Progress reporting from inside compiled sampling loops.

The loops call :class:`ProgressReporter` through ``jax.debug.callback`` with per-device counts;
it sums them over devices and forwards them, at most ~4 times a second, to a tqdm bar
(``progress=True``) or to the user's callable, which receives
``{"done", "total", "iterations", "paid_nfe"}``. Reporting never changes the results.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

__all__ = ["ProgressReporter", "MIN_INTERVAL_S"]

MIN_INTERVAL_S = 0.25  # seconds between two updates (the final one always goes through)


class ProgressReporter:
    """Host side of a loop's progress callback.

    Args:
      progress: ``True`` for a tqdm bar, or a callable receiving a dict
        ``{"done", "total", "iterations", "paid_nfe"}``.
      total: samples the job makes.
      initial: samples already done before this loop (a resumed job).

    Call it as ``reporter(device, done_on_device, iterations, paid_nfe, final=False)``.
    """

    def __init__(self, progress: bool | Callable[[dict], None], total: int, initial: int = 0):
        self.fn = progress if callable(progress) else None
        self.total, self.initial = total, initial
        self.done: dict[int, int] = {}
        self.last = 0.0
        self.lock = threading.Lock()
        self.bar = None
        if progress is True:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=initial, unit="sample")

    def __call__(self, device, count, iterations, paid, final: bool = False) -> None:
        with self.lock:
            self.done[int(device)] = int(count)
            now = time.monotonic()
            done = self.initial + sum(self.done.values())
            if now - self.last < MIN_INTERVAL_S and not (final and done >= self.total):
                return
            self.last = now
            if self.bar is not None:
                self.bar.update(done - self.bar.n)
                if done >= self.total:
                    self.bar.close()
            if self.fn is not None:
                self.fn(dict(done=done, total=self.total, iterations=int(iterations), paid_nfe=int(paid)))
