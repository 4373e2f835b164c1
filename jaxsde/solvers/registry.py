"""Solvers by name, for the command line and the benchmarks."""

from __future__ import annotations

import inspect
from collections.abc import Callable

from .adaptive_multistep import AdaptiveMultistepSolver
from .base import Solver
from .ddim import DDIM
from .deis import DEIS
from .dpm_adaptive import AdaptiveDPMSolver
from .dpm_solver import DPMSolverPP
from .dpm_solver_sde import DPMSolverPPSDE
from .edm import EDMHeun
from .euler_ancestral import EulerAncestral
from .euler_maruyama import EulerMaruyama
from .forward_value import ForwardValue
from .gotta_go_fast import GottaGoFast
from .ipndm import IPNDM
from .lms import LMS
from .multilevel import MultilevelEM
from .predictor_corrector import PredictorCorrector, ReverseDiffusion
from .probability_flow import ProbabilityFlow
from .sa_solver import SASolver
from .unipc import UniPC

# name -> (constructor from options, one-line description)
_REGISTRY: dict[str, tuple[Callable[..., Solver], str]] = {
    "ggf": (lambda rtol=0.05, atol=None: GottaGoFast(rtol=rtol, atol=atol), "Gotta Go Fast (--rtol, --atol)"),
    "dpm-adaptive": (lambda rtol=0.05, atol=None, eta=0.0: AdaptiveDPMSolver(rtol=rtol, atol=atol, eta=eta),
                     "adaptive DPM-Solver-23 in log-SNR, data prediction (--rtol, --atol, --eta)"),
    "multistep-adaptive": (lambda rtol=0.05, atol=None, eta=0.0: AdaptiveMultistepSolver(rtol=rtol, atol=atol,
                                                                                              tau=eta),
                           "adaptive exponential Adams PEC, 1 NFE per step (--rtol, --atol, --eta = tau)"),
    "em": (lambda steps=1000: EulerMaruyama(steps), "Euler-Maruyama (--steps)"),
    "rd": (lambda steps=1000: ReverseDiffusion(steps), "reverse-diffusion predictor (--steps)"),
    "pc": (lambda steps=1000, snr=0.01: PredictorCorrector(steps, snr=snr),
           "reverse diffusion + Langevin corrector (--steps, --snr)"),
    "pf": (lambda rtol=1e-5, atol=None: ProbabilityFlow(rtol=rtol, atol=rtol if atol is None else atol),
           "probability-flow ODE, adaptive dopri5 (--rtol, --atol)"),
    "ddim": (lambda steps=50: DDIM(steps), "DDIM, eta=0 (--steps)"),
    "dpmpp": (lambda steps=20: DPMSolverPP(steps, order=2), "DPM-Solver++ 2M (--steps)"),
    "sa": (lambda steps=20: SASolver(steps), "SA-Solver 3/4 (--steps)"),
    "unipc": (lambda steps=20: UniPC(steps, order=2), "UniPC-2 bh2, predictor-corrector (--steps)"),
    "deis": (lambda steps=20: DEIS(steps, order=3), "DEIS tAB-3 (log-rho) (--steps)"),
    "ipndm": (lambda steps=20: IPNDM(steps, order=4), "iPNDM order 4 on the EDM grid (--steps)"),
    "dpmpp-sde": (lambda steps=20, eta=1.0: DPMSolverPPSDE(steps, order=2, eta=eta),
                  "DPM-Solver++ 2M SDE (--steps, --eta)"),
    "euler-ancestral": (lambda steps=50, eta=1.0: EulerAncestral(steps, eta=eta), "Euler ancestral (--steps, --eta)"),
    "lms": (lambda steps=20: LMS(steps, order=4), "linear multistep, order 4 (--steps)"),
    "fv": (lambda steps=10: ForwardValue(steps), "forward-value sampler F-DDIM (--steps)"),
    "edm": (lambda steps=18: EDMHeun(steps), "EDM Heun (--steps)"),
    "mlem": (lambda steps=200: MultilevelEM(steps, probabilities=(1.0, 0.5, 0.25)),
             "multilevel EM over digits-small/medium/large, p = (1, 0.5, 0.25) (--steps; model digits only)"),
}


def register(name: str, factory: Callable[..., Solver], description: str) -> None:
    """Add a solver to the registry; ``factory``'s keyword parameters are the options it accepts
    (:func:`make_solver` refuses any other option given a value)."""
    _REGISTRY[name] = (factory, description)


def solver_names() -> list[str]:
    return sorted(_REGISTRY)


def solver_options(name: str) -> tuple[str, ...]:
    """The options :func:`make_solver` accepts for ``name`` (e.g. ``("steps",)``)."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown solver {name!r}; available: {', '.join(solver_names())}")
    return tuple(inspect.signature(_REGISTRY[name][0]).parameters)


def describe_solvers() -> str:
    return "; ".join(f"{k}: {v[1]}" for k, v in sorted(_REGISTRY.items()))


def make_solver(name: str, **options) -> Solver:
    """Build a solver by name; ``options`` with value None fall back to the solver's defaults."""
    solver_options(name)  # refuses an unknown name
    factory = _REGISTRY[name][0]
    given = {k: v for k, v in options.items() if v is not None}
    accepted = set(solver_options(name))
    unused = sorted(set(given) - accepted)
    if unused:
        flags = ", ".join("--" + k.replace("_", "-") for k in unused)
        takes = ", ".join("--" + k.replace("_", "-") for k in sorted(accepted)) or "no options"
        raise ValueError(f"solver {name!r} does not use {flags}; it takes {takes}")
    return factory(**given)
