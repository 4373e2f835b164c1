"""What a solve returns: per-sample :class:`Stats` and :class:`Solution`, and the host-side
:class:`BatchSummary` a batched solution gives of itself (``sol.summary()``)."""

from __future__ import annotations

from typing import NamedTuple

import jax
import numpy as np

from . import results

Array = jax.Array

__all__ = ["Stats", "Solution", "BatchSummary"]


class Stats(NamedTuple):
    """Per-sample counters (int32).

    Attributes:
        nfe: score evaluations spent on the sample, the final denoising step included.
        num_accepted: accepted attempts.
        num_rejected: rejected attempts.
        num_steps: loop iterations (attempts) the sample's loop ran.
        noise_dropped: remembered Brownian points the noise source forgot because its memory was
            full (:class:`jaxsde.BrownianMemoryNoise`; always 0 for the other sources). Above 0,
            the sample's noise is no longer one exact Brownian path: raise the source's ``depth``."""

    nfe: Array
    num_accepted: Array
    num_rejected: Array
    num_steps: Array
    noise_dropped: Array


class Solution(NamedTuple):
    """What ``solve``/``sample`` return; ``sample`` adds a leading axis of length n to each field.

    Attributes:
        x: the final sample (after the final denoising step if ``denoise``).
        t: the time reached (``t_end`` on success).
        stats: the sample's counters, :class:`Stats`.
        result: a :mod:`jaxsde.results` code, 0 = success.
    """

    x: Array
    t: Array
    stats: Stats
    result: Array

    def summary(self) -> BatchSummary:
        """Host-side :class:`BatchSummary` of a batched solution (any leading axes)."""
        nfe = np.asarray(self.stats.nfe).reshape(-1).astype(np.int64)
        steps = np.asarray(self.stats.num_steps).reshape(-1)
        return BatchSummary(
            n=int(nfe.size),
            mean_nfe=float(nfe.mean()),
            min_nfe=int(nfe.min()),
            max_nfe=int(nfe.max()),
            loop_iterations=int(steps.max()),
            useful_work=float(nfe.sum() / (nfe.size * max(nfe.max(), 1))),
            num_failed=int(np.sum(np.asarray(self.result) != results.SUCCESS)),
            mean_rejected=float(np.asarray(self.stats.num_rejected).mean()),
        )


class BatchSummary(NamedTuple):
    """Host-side summary of a batch: what the samples needed vs what the batch paid for.

    Attributes:
        n: samples in the batch.
        mean_nfe: mean score evaluations per sample.
        min_nfe: the fewest score evaluations a sample took.
        max_nfe: the most score evaluations a sample took.
        loop_iterations: iterations the vmapped loop ran (the slowest sample's).
        useful_work: sum of per-sample NFE / (n * max NFE), the fraction of the batch's score
            evaluations that some sample needed.
        num_failed: samples whose result code is not 0.
        mean_rejected: mean rejected attempts per sample."""

    n: int
    mean_nfe: float
    min_nfe: int
    max_nfe: int
    loop_iterations: int
    useful_work: float
    num_failed: int
    mean_rejected: float

    def __str__(self) -> str:
        return (f"n={self.n} NFE mean={self.mean_nfe:.1f} min={self.min_nfe} max={self.max_nfe} "
                f"loop_iterations={self.loop_iterations} useful_work={self.useful_work:.2f} "
                f"rejected/sample={self.mean_rejected:.2f} failed={self.num_failed}")
