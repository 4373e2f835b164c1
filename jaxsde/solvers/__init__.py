"""Solvers: objects with ``init``/``step`` run by :func:`jaxsde.solve` (see ``base``)."""

from .base import FixedGridSolver, Solver, SolverInit, StepOut
from .euler_maruyama import EulerMaruyama
from .gotta_go_fast import GottaGoFast
from .predictor_corrector import PredictorCorrector, ReverseDiffusion
from .probability_flow import ProbabilityFlow

__all__ = [
    "Solver",
    "SolverInit",
    "StepOut",
    "FixedGridSolver",
    "EulerMaruyama",
    "ReverseDiffusion",
    "PredictorCorrector",
    "GottaGoFast",
    "ProbabilityFlow",
]
