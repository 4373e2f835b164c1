"""jaxsde: fast, trustworthy sampling from score-based diffusion models in JAX.

    sol = jaxsde.sample(key, jaxsde.VPSDE(), score, jaxsde.GottaGoFast(rtol=0.05), shape, n)

See ``solve``/``sample`` (the driver), the SDEs, and the solvers below.
"""

import importlib
from typing import Any

from . import (
    controllers,
    editing,
    flow,
    grid_optimization,
    grids,
    guidance,
    likelihood,
    noise,
    precision,
    prediction,
    results,
)
from .driver import sample, solve, solve_batch, summarize
from .editing import Inpainting, inpaint, sdedit
from .flow import flow_grid
from .grid_optimization import GridOptimization, optimize_grid
from .grids import alpha_zero_grid, time_grid
from .likelihood import (
    BitsPerDim,
    Likelihood,
    bits_per_dim,
    dequantize,
    evaluate_bits_per_dim,
    log_likelihood,
    log_likelihood_batch,
    quantize,
)
from .multilevel_batch import sample_multilevel
from .noise import BrownianMemoryNoise, BrownianNoise, BrownianTreeNoise, FreshNoise, GivenNoise, sample_keys
from .precision import cast_params, mixed_precision
from .prediction import Prediction
from .sde import SDE, VESDE, VPSDE, DiscreteVPSDE, FlowSDE, GaussianPathSDE, ScoreFn, SubVPSDE
from .solution import BatchSummary, Solution, Stats
from .solvers import (
    DDIM,
    DEIS,
    IPNDM,
    LMS,
    AdaptiveDPMSolver,
    AdaptiveMultistepSolver,
    DPMSolverPP,
    DPMSolverPPSDE,
    EDMHeun,
    EulerAncestral,
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
    UniPC,
)

# Imported on first use (PEP 562): the checkpoint loaders, the Flax models, the sparse engine and
# continuous batching, so that ``import jaxsde`` loads neither flax, optax, diffrax nor torch.
_LAZY_NAMES = {
    "generate": ("jaxsde.batching", "generate"),
    "Generated": ("jaxsde.batching", "Generated"),
    "GenerateSummary": ("jaxsde.batching", "GenerateSummary"),
    "pretrained": ("jaxsde.checkpoints.embedded", "pretrained"),
    "Checkpoint": ("jaxsde.checkpoints.checkpoint", "Checkpoint"),
}
_LAZY_MODULES = ("apps", "batching", "checkpoints", "models", "sparse", "testing", "training")


def __getattr__(name: str) -> Any:
    if name in _LAZY_NAMES:
        module, attr = _LAZY_NAMES[name]
        value = getattr(importlib.import_module(module), attr)
    elif name in _LAZY_MODULES:
        value = importlib.import_module(f"jaxsde.{name}")
    else:
        raise AttributeError(f"module 'jaxsde' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY_NAMES) | set(_LAZY_MODULES))

__version__ = "0.1.0"

__all__ = [
    "SDE",
    "VPSDE",
    "SubVPSDE",
    "VESDE",
    "DiscreteVPSDE",
    "ScoreFn",
    "GaussianPathSDE",
    "FlowSDE",
    "flow",
    "flow_grid",
    "prediction",
    "Prediction",
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
    "sample_multilevel",
    "FreshNoise",
    "BrownianNoise",
    "BrownianTreeNoise",
    "BrownianMemoryNoise",
    "GivenNoise",
    "time_grid",
    "alpha_zero_grid",
    "grids",
    "optimize_grid",
    "GridOptimization",
    "grid_optimization",
    "noise",
    "results",
    "checkpoints",
    "models",
    "pretrained",
    "Checkpoint",
    "mixed_precision",
    "cast_params",
    "precision",
    "guidance",
    "likelihood",
    "Likelihood",
    "BitsPerDim",
    "log_likelihood",
    "log_likelihood_batch",
    "bits_per_dim",
    "quantize",
    "dequantize",
    "evaluate_bits_per_dim",
]
