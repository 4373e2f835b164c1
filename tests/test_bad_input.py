"""Bad input, case by case: each is refused up front with a message that names what to fix, or,
inside the compiled solve, ends with a documented result code (never a silent value)."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxsde
from jaxsde import controllers, results
from jaxsde.apps.cli import main as cli

KEY = jax.random.PRNGKey(0)
VP = jaxsde.VPSDE()
X = jnp.zeros(3)


def linear_score(x, t):
    return -x


def solve(**kw):
    args = dict(key=KEY, sde=VP, score=linear_score, solver=jaxsde.EulerMaruyama(10), x_T=X)
    args.update(kw)
    return jaxsde.solve(args.pop("key"), args.pop("sde"), args.pop("score"), args.pop("solver"), args.pop("x_T"),
                        **args)


# (case id, a call, the exception, a regex its message must match)
REFUSED = [
    # --- solve: types, checked before any attribute is read
    ("sde-string", lambda: solve(sde="vp"), TypeError, "sde must be a jaxsde SDE"),
    ("sde-none", lambda: solve(sde=None), TypeError, "sde must be a jaxsde SDE"),
    ("solver-string", lambda: solve(solver="em"), TypeError, "solver must be a jaxsde solver"),
    ("solver-class-not-instance", lambda: solve(solver=jaxsde.EulerMaruyama), TypeError, "solver must be"),
    ("score-not-callable", lambda: solve(score=1.0), TypeError, "score must be a callable"),
    ("x-int", lambda: solve(x_T=jnp.zeros(3, jnp.int32)), TypeError, "floating-point"),
    ("x-bf16-state", lambda: solve(x_T=jnp.zeros(3, jnp.bfloat16)), TypeError, "mixed_precision"),
    ("x-f16-state", lambda: solve(x_T=jnp.zeros(3, jnp.float16)), TypeError, "float32 or float64"),
    ("score-wrong-shape", lambda: solve(score=lambda x, t: x[:2]), ValueError, "shaped like x"),
    ("score-batched", lambda: solve(score=lambda x, t: x[None]), ValueError, "no batch axis"),
    ("score-int-output", lambda: solve(score=lambda x, t: jnp.zeros(3, jnp.int32)), TypeError, "floating-point"),
    # --- solve: times, steps, noise
    ("t-end-zero", lambda: solve(t_end=0.0), ValueError, r"t_end must lie in \(0, T\)"),
    ("t-end-past-T", lambda: solve(t_end=2.0), ValueError, "t_end must lie in"),
    ("t-start-below-end", lambda: solve(t_start=1e-4), ValueError, "t_start must lie in"),
    ("t-start-nan", lambda: solve(t_start=float("nan")), ValueError, "finite Python float"),
    ("t-start-traced", lambda: jax.jit(lambda t: solve(t_start=t).x)(1.0), TypeError, "static Python float"),
    ("t-end-string", lambda: solve(t_end="0.001"), TypeError, "t_end must be a Python float"),
    ("max-steps-zero", lambda: solve(max_steps=0), ValueError, "max_steps must be a positive integer"),
    ("max-steps-float", lambda: solve(max_steps=10.0), ValueError, "max_steps"),
    ("given-noise-short-of-grid", lambda: solve(solver=jaxsde.EulerMaruyama(50),
                                                noise=jaxsde.GivenNoise(jnp.zeros((5, 1, 3)))),
     ValueError, "at least 50"),
    ("given-noise-wrong-shape", lambda: solve(noise=jaxsde.GivenNoise(jnp.zeros((10, 1, 4)))),
     ValueError, "per-attempt shape"),
    ("custom-grid-disagrees", lambda: solve(solver=jaxsde.DDIM(2, grid=np.array([1.0, 0.5, 0.01])), t_end=0.02),
     ValueError, "custom grid"),
    # --- sample / batch
    ("sample-n-zero", lambda: jaxsde.sample(KEY, VP, linear_score, jaxsde.DDIM(5), (3,), 0), ValueError,
     "n must be a positive integer"),
    ("sample-sde-string", lambda: jaxsde.sample(KEY, "vp", linear_score, jaxsde.DDIM(5), (3,), 4), TypeError,
     "sde must be"),
    ("sample-bf16", lambda: jaxsde.sample(KEY, VP, linear_score, jaxsde.DDIM(5), (3,), 4, dtype=jnp.bfloat16),
     TypeError, "mixed_precision"),
    ("generate-given-noise", lambda: jaxsde.generate(KEY, VP, linear_score, jaxsde.DDIM(5), (3,), 4, batch_size=2,
                                                     noise=jaxsde.GivenNoise(jnp.zeros((4, 5, 1, 3)))),
     ValueError, "per-sample noise arrays need `sample`"),
    ("generate-batch-zero", lambda: jaxsde.generate(KEY, VP, linear_score, jaxsde.DDIM(5), (3,), 4, batch_size=0),
     ValueError, "batch_size must be a positive integer"),
    # --- SDEs and grids
    ("vp-beta-negative", lambda: jaxsde.VPSDE(beta_min=-0.1), ValueError, "finite positive"),
    ("vp-beta-order", lambda: jaxsde.VPSDE(beta_min=5.0, beta_max=1.0), ValueError, "beta_max"),
    ("ve-sigma-order", lambda: jaxsde.VESDE(sigma_min=10.0, sigma_max=1.0), ValueError, "sigma_max"),
    ("unknown-grid", lambda: jaxsde.DDIM(10, grid="cosine-ish"), ValueError, "unknown grid"),
    ("grid-increasing", lambda: jaxsde.DDIM(2, grid=np.array([0.01, 0.5, 1.0])), ValueError, "strictly decreasing"),
    ("grid-length", lambda: jaxsde.DDIM(3, grid=np.array([1.0, 0.5, 0.01])), ValueError, "needs 4 times"),
    ("steps-zero", lambda: jaxsde.EulerMaruyama(0), ValueError, "num_steps"),
    # --- adaptive solvers and controllers
    ("ggf-rtol-negative", lambda: jaxsde.GottaGoFast(rtol=-0.1), ValueError, "rtol"),
    ("dpm-adaptive-order", lambda: jaxsde.AdaptiveDPMSolver(order=4), ValueError, "order"),
    ("dpm-adaptive-eta", lambda: jaxsde.AdaptiveDPMSolver(eta=-1.0), ValueError, "eta"),
    ("multistep-order", lambda: jaxsde.AdaptiveMultistepSolver(order=5), ValueError, r"order must be an integer"),
    ("multistep-tau", lambda: jaxsde.AdaptiveMultistepSolver(tau=-0.5), ValueError, "tau"),
    ("multistep-factor-max", lambda: jaxsde.AdaptiveMultistepSolver(factor_max=0.5), ValueError, "factor_max"),
    ("fixed-grid-as-controller", lambda: jaxsde.AdaptiveDPMSolver(controller=controllers.FixedGrid(10)),
     TypeError, "FixedGrid"),
    ("controller-not-a-controller", lambda: jaxsde.AdaptiveDPMSolver(controller="pid"), TypeError, "controller"),
    ("pid-diverging-coefficients", lambda: controllers.PIDController(pcoeff=0.3, icoeff=0.1, dcoeff=0.3),
     ValueError, "cannot converge"),
    # --- editing
    ("sdedit-t0-zero", lambda: jaxsde.sdedit(KEY, VP, linear_score, jaxsde.DDIM(5), X, 0.0), ValueError, "t0"),
    ("inpaint-mask-shape", lambda: jaxsde.inpaint(KEY, VP, linear_score, jaxsde.DDIM(5), X, jnp.ones(4)), ValueError,
     "shape"),
    ("inpaint-mask-values", lambda: jaxsde.inpaint(KEY, VP, linear_score, jaxsde.DDIM(5), X, jnp.full(3, 0.5)),
     ValueError, "only 0 and 1"),
    # --- checkpoint loaders
    ("checkpoint-kind", lambda: jaxsde.checkpoints.load("x", "pickle"), ValueError, "unknown checkpoint kind"),
    ("checkpoint-missing-file", lambda: jaxsde.checkpoints.load("/nonexistent/ckpt.pth", "score_sde_pytorch"),
     (OSError, ValueError), "nonexistent"),
    ("pretrained-unknown", lambda: jaxsde.pretrained("cifar10"), ValueError, "unknown model"),
]


@pytest.mark.parametrize("call, error, message", [c[1:] for c in REFUSED], ids=[c[0] for c in REFUSED])
def test_refused_up_front(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_the_battery_is_large_enough():
    assert len(REFUSED) + len(CLI) + 4 >= 40  # + the four result-code cases below


def test_checkpoint_garbage_file_names_the_file(tmp_path):
    path = tmp_path / "garbage.msgpack"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="garbage.msgpack"):
        jaxsde.checkpoints.load(str(path), "score_sde")


# --- inside the compiled solve: documented result codes -------------------------------------

def test_given_noise_running_out_in_an_adaptive_solve_is_a_code():
    sol = solve(solver=jaxsde.GottaGoFast(rtol=0.05), noise=jaxsde.GivenNoise(jnp.zeros((1, 1, 3))))
    assert int(sol.result) == results.NOISE_EXHAUSTED
    assert float(sol.t) > VP.eps and int(sol.stats.num_steps) == 2 and int(sol.stats.num_accepted) <= 1
    with pytest.raises(RuntimeError, match="GivenNoise array ran out"):
        results.raise_if_failed(sol)


def test_nonfinite_score_is_a_code_and_the_sample_is_not_denoised():
    def bad(x, t):
        return jnp.where(t < 0.5, jnp.nan, -x)

    sol = solve(score=bad, solver=jaxsde.EulerMaruyama(10))
    assert int(sol.result) == results.NONFINITE and np.all(np.isfinite(sol.x))
    assert 0.3 < float(sol.t) < 0.5  # the last finite state (score NaN below t = 0.5), not a denoised one
    assert int(sol.stats.nfe) == 10  # the grid ran to its end; no final evaluation counted
    unchecked = solve(score=bad, solver=jaxsde.EulerMaruyama(10), check_finite=False)
    assert int(unchecked.result) == results.NONFINITE and not np.all(np.isfinite(unchecked.x))
    assert "check_finite=False" in results.describe(results.NONFINITE)


def test_max_steps_is_a_code_and_the_sample_is_not_denoised():
    sol = solve(solver=jaxsde.EulerMaruyama(50), max_steps=10)
    assert int(sol.result) == results.MAX_STEPS_REACHED
    assert int(sol.stats.nfe) == 10 and float(sol.t) > 0.5
    ref = solve(solver=jaxsde.EulerMaruyama(50), max_steps=10, denoise=False)
    np.testing.assert_array_equal(sol.x, ref.x)


def test_adaptive_max_steps_is_a_code():
    sol = solve(solver=jaxsde.AdaptiveDPMSolver(rtol=1e-4), max_steps=3)
    assert int(sol.result) == results.MAX_STEPS_REACHED and float(sol.t) > VP.eps


# --- the command line: exit code 2 and a message, no traceback ------------------------------

CLI = [
    ("unknown-solver", ["sample", "--solver", "euler-magic", "--n", "4"], "unknown solver"),
    ("unused-option", ["sample", "--solver", "em", "--rtol", "0.05", "--n", "4"], "does not use --rtol"),
    ("unused-steps", ["sample", "--solver", "ggf", "--steps", "10", "--n", "4"], "does not use --steps"),
    ("unknown-model", ["sample", "--model", "cifar", "--n", "4"], "unknown model"),
    ("n-zero", ["sample", "--n", "0", "--no-metrics"], "--n must be"),
    ("negative-eta", ["sample", "--solver", "dpm-adaptive", "--eta", "-1", "--n", "4"], "eta"),
    ("generate-chunk-zero", ["generate", "--chunk-size", "0", "--out", "unused-dir"], "--chunk-size"),
    ("train-bad-sde", ["train", "--sde", "ode", "--out", "unused-run"], "sde"),
]


@pytest.mark.parametrize("argv, message", [c[1:] for c in CLI], ids=[c[0] for c in CLI])
def test_cli_refuses_with_a_message(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not os.path.exists("grid.png")
