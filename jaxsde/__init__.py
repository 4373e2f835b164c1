"""jaxsde: fast, trustworthy sampling from score-based diffusion models in JAX.

    sol = jaxsde.sample(key, jaxsde.VPSDE(), score, jaxsde.GottaGoFast(rtol=0.05), shape, n)

See ``solve``/``sample`` (the driver), the SDEs, and the solvers below.
"""

from . import checkpoints, controllers, editing, embedded, grids, models, noise, precision, results, sparse
from .driver import BatchSummary, Solution, Stats, sample, sample_keys, solve, solve_batch, summarize
from .editing import Inpainting, inpaint, sdedit
from .embedded import Checkpoint, pretrained
from .generate import Generated, GenerateSummary, generate
from .grids import time_grid
from .noise import BrownianNoise, FreshNoise, GivenNoise
from .precision import cast_params, mixed_precision
from .sde import SDE, VESDE, VPSDE, DiscreteVPSDE, ScoreFn, SubVPSDE
from .solvers import (
    DDIM,
    AdaptiveDPMSolver,
    AdaptiveMultistepSolver,
    DPMSolverPP,
    EDMHeun,
    EulerMaruyama,
    ForwardValue,
    GottaGoFast,
    MultilevelEM,
    MultilevelScore,
    PredictorCorrector,
    ProbabilityFlow,
    ReverseDiffusion,
    SASolver,
    Solver,
    sample_multilevel,
)

__version__ = "0.1.0"

__all__ = [
    "SDE",
    "VPSDE",
    "SubVPSDE",
    "VESDE",
    "DiscreteVPSDE",
    "ScoreFn",
    "solve",
    "solve_batch",
    "sample",
    "generate",
    "sdedit",
    "inpaint",
    "Inpainting",
    "editing",
    "sparse",
    "Generated",
    "GenerateSummary",
    "sample_keys",
    "summarize",
    "Solution",
    "Stats",
    "BatchSummary",
    "Solver",
    "EulerMaruyama",
    "ReverseDiffusion",
    "PredictorCorrector",
    "GottaGoFast",
    "ProbabilityFlow",
    "AdaptiveDPMSolver",
    "AdaptiveMultistepSolver",
    "controllers",
    "DDIM",
    "DPMSolverPP",
    "SASolver",
    "ForwardValue",
    "EDMHeun",
    "MultilevelEM",
    "MultilevelScore",
    "sample_multilevel",
    "FreshNoise",
    "BrownianNoise",
    "GivenNoise",
    "time_grid",
    "grids",
    "noise",
    "results",
    "embedded",
    "checkpoints",
    "models",
    "pretrained",
    "Checkpoint",
    "mixed_precision",
    "cast_params",
    "precision",
]
