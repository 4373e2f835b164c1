"""Mixed precision: 16-bit solver states refused; a low-precision network with a float32 state
keeps the float32 run's quality on an exact Gaussian law."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxsde

MU, S, DIM, N = 0.3, 0.5, 8, 2000


def eps_network_score(sde, low):
    """The exact score of N(MU, S^2 I) computed as a network in ``low`` precision would: the
    x-dependent arithmetic in ``low``, the time coefficients from the exact (float32) time."""

    def score(x, t):
        alpha, sigma = sde.marginal(t)
        c = alpha**2 * S**2 + sigma**2
        if low is None:
            return -(x - alpha * MU) / c
        return -(x.astype(low) - (alpha * MU).astype(low)) * (1.0 / c).astype(low)

    return score


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_a_16_bit_state_is_refused_with_the_fix(dtype):
    sde = jaxsde.VPSDE()
    with pytest.raises(TypeError, match="mixed_precision"):
        jaxsde.solve(jax.random.PRNGKey(0), sde, lambda x, t: -x, jaxsde.EulerMaruyama(10), jnp.ones(3, dtype))
    with pytest.raises(TypeError, match="float32 or float64"):
        jaxsde.sample(jax.random.PRNGKey(0), sde, lambda x, t: -x, jaxsde.GottaGoFast(), (3,), 4, dtype=dtype)


@pytest.mark.parametrize("sde", [jaxsde.VPSDE(), jaxsde.VESDE()], ids=["vp", "ve"])
@pytest.mark.parametrize("low", [jnp.bfloat16, jnp.float16], ids=["bf16", "f16"])
def test_low_precision_network_keeps_the_float32_quality(sde, low):
    """DPM-Solver++ at 20 steps, 2000 samples: the bf16/f16 network's samples are float32, stay
    within 0.05 of the float32 network's (same key; bf16 rounding is 2^-8 relative), and their
    mean and std errors against the exact law are within 3 standard errors of the float32 run's."""
    solver = jaxsde.DPMSolverPP(20)
    run = jax.jit(lambda k, low: jaxsde.sample(k, sde, eps_network_score(sde, low), solver, (DIM,), N).x,
                  static_argnums=1)
    ref = np.asarray(run(jax.random.PRNGKey(1), None))
    got = run(jax.random.PRNGKey(1), low)
    assert got.dtype == jnp.float32
    got = np.asarray(got)
    assert np.abs(got - ref).max() < 0.05
    se_mean, se_std = S / np.sqrt(N * DIM), S / np.sqrt(2 * N * DIM)
    assert abs(got.mean() - MU) < abs(ref.mean() - MU) + 3 * se_mean
    assert abs(got.std(0).mean() - S) < abs(ref.std(0).mean() - S) + 3 * se_std


def test_mixed_precision_casts_in_and_out():
    seen = {}

    def score(x, t):
        seen["x"], seen["t"] = x.dtype, t.dtype
        return -x

    low = jaxsde.mixed_precision(score, jnp.bfloat16)
    out = low(jnp.ones(3, jnp.float32), jnp.float32(0.5))
    assert out.dtype == jnp.float32 and seen == {"x": jnp.bfloat16, "t": jnp.bfloat16}
    jaxsde.mixed_precision(score, jnp.bfloat16, cast_time=False)(jnp.ones(3), jnp.float32(0.5))
    assert seen == {"x": jnp.bfloat16, "t": jnp.float32}
    with pytest.raises(TypeError, match="floating dtype"):
        jaxsde.mixed_precision(score, jnp.int8)


def test_a_score_returning_bf16_is_cast_by_the_driver():
    sde = jaxsde.VPSDE()
    x = jnp.linspace(-1.0, 1.0, 4)
    low = jaxsde.solve(jax.random.PRNGKey(0), sde, lambda x, t: (-x).astype(jnp.bfloat16), jaxsde.DDIM(10), x)
    ref = jaxsde.solve(jax.random.PRNGKey(0), sde, lambda x, t: -x, jaxsde.DDIM(10), x)
    assert low.x.dtype == jnp.float32 and int(low.result) == 0
    np.testing.assert_allclose(low.x, ref.x, atol=0.02)


def test_embedded_model_network_in_bf16():
    """``score_fn(params, compute_dtype=bf16)``: the network computes in bf16 (its jaxpr holds
    bf16 operations) and the score stays within 2% (relative L2) of the float32 network's for
    t <= 0.5 (measured 0.5%)."""
    ck = jaxsde.pretrained("digits-small")
    low = ck.score_fn(ck.params, jnp.bfloat16)
    x = jax.random.normal(jax.random.PRNGKey(0), (8, *ck.shape))
    assert "bf16" in str(jax.make_jaxpr(lambda x: low(x, jnp.float32(0.5)))(x[0]))
    ts = jnp.array([0.01, 0.1, 0.5], jnp.float32)
    both = jax.jit(jax.vmap(jax.vmap(lambda x, t: (ck.score(x, t), low(x, t)), (0, None)), (None, 0)))
    a, b = both(x, ts)
    assert b.dtype == jnp.float32
    rel = jnp.linalg.norm((a - b).reshape(3, -1), axis=1) / jnp.linalg.norm(a.reshape(3, -1), axis=1)
    assert float(rel.max()) < 0.02


def test_matmul_dtypes_counts_convolutions_and_matmuls_by_operand_dtypes():
    """``matmul_dtypes``: every ``dot_general`` / ``conv_general_dilated`` equation, nested ones (jit, scan,
    cond, custom_jvp) included, once each, keyed by its (lhs, rhs) dtype names; other operations are not
    counted."""
    w16 = jnp.ones((4, 4), jnp.bfloat16)
    k32 = jnp.ones((3, 3, 1, 1), jnp.float32)

    @jax.custom_jvp
    def smooth(x):
        return x @ w16

    smooth.defjvp(lambda primals, tangents: (smooth(*primals), tangents[0] @ w16))

    def fn(x, y):
        a = jnp.tanh(x @ w16)  # bf16 x bf16
        b = jax.jit(lambda y: y @ y.T)(y)  # f32 x f32, inside a jit
        c, _ = jax.lax.scan(lambda h, _: (h @ w16, None), a, None, length=5)  # one bf16 dot, not five
        d = jax.lax.cond(y[0, 0] > 0, lambda v: v @ w16, lambda v: v, c)  # one more bf16, in a branch
        img = jax.lax.conv_general_dilated(y[None, :, :, None], k32, (1, 1), "SAME",
                                           dimension_numbers=("NHWC", "HWIO", "NHWC"))  # f32 convolution
        mixed = jax.lax.dot_general(y, w16, (((1,), (0,)), ((), ())), preferred_element_type=jnp.float32)
        return smooth(d).sum() + b.sum() + img.sum() + mixed.sum()

    x, y = jnp.ones((2, 4), jnp.bfloat16), jnp.ones((4, 4), jnp.float32)
    counts = jaxsde.precision.matmul_dtypes(fn, x, y)
    assert counts == {("bfloat16", "bfloat16"): 4, ("float32", "float32"): 2, ("float32", "bfloat16"): 1}, counts
    assert all(isinstance(k, str) for key in counts for k in key)
    assert all(type(v) is int for v in counts.values())
    assert jaxsde.precision.matmul_dtypes(jax.jit(fn), x, y) == counts  # a jitted fn: the same equations
    assert jaxsde.precision.matmul_dtypes(lambda x: jnp.sin(x) + 1, x) == {}
