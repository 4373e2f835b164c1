"""Solvers: objects with ``init``/``step`` run by :func:`jaxsde.solve` (see ``base``)."""

from .adaptive_multistep import AdaptiveMultistepSolver
from .base import FixedGridSolver, Solver, SolverInit, StepResult, WrappedSolver
from .ddim import DDIM
from .deis import DEIS
from .dpm_adaptive import AdaptiveDPMSolver
from .dpm_solver import DPMSolverPP
from .dpm_solver_sde import DPMSolverPPSDE
from .edm import EDMHeun
from .euler_ancestral import EulerAncestral
from .euler_maruyama import EulerMaruyama
from .exponential import diffusers_grid
from .forward_value import ForwardValue
from .gotta_go_fast import GottaGoFast
from .ipndm import IPNDM
from .lms import LMS
from .multilevel import MultilevelEM, MultilevelScore, multilevel_cost, optimal_probabilities
from .predictor_corrector import PredictorCorrector, ReverseDiffusion
from .probability_flow import ProbabilityFlow
from .sa_solver import SASolver, diffusers_tau
from .unipc import UniPC

__all__ = [
    "Solver",
    "SolverInit",
    "StepResult",
    "FixedGridSolver",
    "WrappedSolver",
    "EulerMaruyama",
    "ReverseDiffusion",
    "PredictorCorrector",
    "GottaGoFast",
    "ProbabilityFlow",
    "AdaptiveDPMSolver",
    "AdaptiveMultistepSolver",
    "DDIM",
    "DPMSolverPP",
    "SASolver",
    "UniPC",
    "DEIS",
    "IPNDM",
    "DPMSolverPPSDE",
    "EulerAncestral",
    "LMS",
    "ForwardValue",
    "EDMHeun",
    "MultilevelEM",
    "MultilevelScore",
    "multilevel_cost",
    "optimal_probabilities",
    "diffusers_grid",
    "diffusers_tau",
]
