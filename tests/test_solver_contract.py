"""The contract every registered solver keeps with the driver.

Parameterised over :func:`jaxsde.solvers.registry.solver_names`, so a solver added to the
registry is tested here without a line more: finite samples on a Gaussian target, the reported
NFE equal to the evaluations a counting score sees, a NaN score ending in ``NONFINITE`` with a
finite ``x``, the batched solve equal to a loop of single solves, and no retrace under ``jit``
when the score's parameters change. Every test shares one compiled program per solver and kind
(:func:`program`), the score's parameters traced.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from compile_options import jit

import jaxsde
from jaxsde import results
from jaxsde.solvers.multilevel import MultilevelEM, MultilevelScore
from jaxsde.solvers.registry import make_solver, solver_names, solver_options
from jaxsde.testing.exact import gaussian_score

SDE = jaxsde.VPSDE()
SHAPE = (3,)
MU, S = 0.5, 0.8
NAMES = solver_names()


def small_solver(name: str):
    """The registered solver with a short grid (fixed-step ones) and its default tolerances."""
    return make_solver(name, steps=8) if "steps" in solver_options(name) else make_solver(name)


def score_for(solver, score):
    """``score`` in the form the solver takes (a multilevel solver gets every level the same)."""
    if isinstance(solver, MultilevelEM):
        return MultilevelScore([score] * len(solver.probabilities))
    return score


def prior(n: int, seed: int = 0):
    keys = jax.random.split(jax.random.PRNGKey(seed), n)
    return jax.vmap(lambda k: SDE.prior_sample(k, SHAPE, jnp.float32))(keys)


def test_registry_is_not_empty():
    assert len(NAMES) >= 10, NAMES


def test_every_solver_class_is_registered_and_exported():
    """A solver is one file plus one registry line: every concrete solver class under jaxsde.solvers
    is built by some registry entry and exported by jaxsde.solvers and jaxsde (so forgetting one of
    them fails here)."""
    import importlib
    import pkgutil

    import jaxsde.solvers as package
    from jaxsde.solvers.base import Solver

    classes = set()
    for info in pkgutil.iter_modules(package.__path__):
        module = importlib.import_module(f"jaxsde.solvers.{info.name}")
        for obj in vars(module).values():
            if not (isinstance(obj, type) and issubclass(obj, Solver) and obj.__module__ == module.__name__
                    and "__dataclass_fields__" in vars(obj)):
                continue
            if not any(getattr(getattr(obj, name, None), "__isabstractmethod__", False) for name in dir(obj)):
                classes.add(obj)
    assert len(classes) >= 18, sorted(c.__name__ for c in classes)
    built = {type(make_solver(name)) for name in NAMES}
    assert classes <= built, f"not in the registry: {sorted(c.__name__ for c in classes - built)}"
    for cls in classes:
        assert getattr(package, cls.__name__, None) is cls and cls.__name__ in package.__all__, cls.__name__
        assert getattr(jaxsde, cls.__name__, None) is cls and cls.__name__ in jaxsde.__all__, cls.__name__


def _score(mu, t_nan):
    """The exact Gaussian score with mean ``mu``, NaN below ``t = t_nan`` (never where ``t_nan`` < 0)."""
    exact = gaussian_score(SDE, mu, S)

    def score(x, t):
        return jnp.where(t < t_nan, jnp.nan, exact(x, t))

    return score


_PROGRAMS: dict[tuple[str, str], tuple] = {}


def program(name: str, kind: str):
    """One compiled program per solver and kind, shared by the tests below, the list its traces append
    to and the list its score evaluations append to: ``"single"`` = ``solve(mu, key, x)`` on the exact
    score of mean ``mu`` (traced), each evaluation counted by a callback; ``"batch"`` =
    ``solve_batch(mu, t_nan, keys, x)`` on that score made NaN below ``t_nan``."""
    if (name, kind) not in _PROGRAMS:
        solver, traces, calls = small_solver(name), [], []
        if kind == "single":
            def run(mu, key, x):
                traces.append(1)
                exact = gaussian_score(SDE, mu, S)

                def counting(x, t):
                    jax.debug.callback(lambda: calls.append(1))
                    return exact(x, t)

                return jaxsde.solve(key, SDE, score_for(solver, counting), solver, x)
        else:
            def run(mu, t_nan, keys, x):
                traces.append(1)
                return jaxsde.solve_batch(keys, SDE, score_for(solver, _score(mu, t_nan)), solver, x)
        _PROGRAMS[name, kind] = jit(run), traces, calls
    return _PROGRAMS[name, kind]


MU32, NEVER = jnp.float32(MU), jnp.float32(-1.0)


@pytest.mark.parametrize("name", NAMES)
def test_finite_samples_on_a_gaussian_target(name):
    """Finite samples that succeed and end at the solver's end time (the batch program's score is the exact
    one here: its NaN threshold below every time)."""
    solver = small_solver(name)
    batch, _, _ = program(name, "batch")
    sol = batch(MU32, NEVER, jax.random.split(jax.random.PRNGKey(1), 4), prior(4, seed=1))
    assert np.all(np.asarray(sol.result) == results.SUCCESS), np.asarray(sol.result)
    assert np.all(np.isfinite(np.asarray(sol.x)))
    np.testing.assert_allclose(np.asarray(sol.t), SDE.eps if solver.time_span() is None else solver.time_span()[1],
                               rtol=1e-6)
    assert np.all(np.asarray(sol.stats.nfe) >= 1)


@pytest.mark.parametrize("name", NAMES)
def test_reported_nfe_equals_the_evaluations_of_a_counting_score(name):
    run, _, calls = program(name, "single")
    jax.effects_barrier()
    before = len(calls)
    sol = run(MU32, jax.random.PRNGKey(2), prior(1)[0])
    nfe = int(sol.stats.nfe)  # blocks until the run (and its callbacks) finished
    jax.effects_barrier()
    assert int(sol.result) == results.SUCCESS
    assert nfe == len(calls) - before, (nfe, len(calls) - before)


@pytest.mark.parametrize("name", NAMES)
def test_a_nan_score_gives_nonfinite_with_a_finite_state(name):
    batch, _, _ = program(name, "batch")
    sol = batch(MU32, jnp.float32(0.5), jax.random.split(jax.random.PRNGKey(3), 4), prior(4))
    assert np.all(np.asarray(sol.result) == results.NONFINITE), np.asarray(sol.result)
    assert np.all(np.isfinite(np.asarray(sol.x)))
    # the returned state is the last finite one: at most one step below t = 0.5, far from the end
    assert np.all(np.asarray(sol.t) > 0.2), np.asarray(sol.t)


@pytest.mark.parametrize("name", NAMES)
def test_batched_solve_equals_a_loop_of_single_solves(name):
    keys = jax.random.split(jax.random.PRNGKey(4), 4)
    x_T = prior(4, seed=5)
    batch = program(name, "batch")[0](MU32, NEVER, keys, x_T)
    one, _, _ = program(name, "single")
    singles = [one(MU32, keys[i], x_T[i]) for i in range(4)]
    np.testing.assert_array_equal(np.asarray(batch.result), results.SUCCESS)
    np.testing.assert_array_equal(np.asarray(batch.stats.nfe), [int(s.stats.nfe) for s in singles])
    np.testing.assert_array_equal(np.asarray(batch.result), [int(s.result) for s in singles])
    # equal up to float rounding (XLA compiles the batched and the single program differently)
    np.testing.assert_allclose(np.asarray(batch.x), np.stack([np.asarray(s.x) for s in singles]),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_no_retrace_when_the_score_parameters_change(name):
    run, traces, _ = program(name, "single")
    x_T = prior(1)[0]
    first = run(jnp.float32(0.5), jax.random.PRNGKey(6), x_T)
    second = run(jnp.float32(-0.5), jax.random.PRNGKey(6), x_T)
    assert len(traces) == 1  # one trace for every value of the parameter (in this process: the program is shared)
    assert int(first.result) == int(second.result) == results.SUCCESS
    assert not np.allclose(np.asarray(first.x), np.asarray(second.x))  # the traced parameter was used
