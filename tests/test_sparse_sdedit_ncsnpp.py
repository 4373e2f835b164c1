"""sparse_sdedit driving NCSN++ / DDPM++ (jaxsde.models.ncsnpp.NCSNpp) with the score_sde checkpoints'
conventions (jaxsde.checkpoints.score_sde.make_score_fn): VE takes sigma(t) and returns the score, VP
takes 999 t and returns -eps; on tiny networks, 3 DDIM steps."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxsde
from jaxsde.checkpoints.score_sde import make_score_fn, make_sde
from jaxsde.editing import sdedit
from jaxsde.models.ncsnpp import DDPMPP_CIFAR10_VP, NCSNPP_CIFAR10_VE, NCSNpp
from jaxsde.sparse import SparseUNet, random_params, sparse_sdedit

H = 16
BLOCKS = (4, 2)
FAST = {"xla_backend_optimization_level": 0}  # tiny networks: XLA's backend optimisations cost more than they save


def _tiny(base, **overrides):
    cfg = base.replace(nf=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,), image_size=H, **overrides)
    model = NCSNpp(cfg)
    return model, random_params(model, (1, H, H, 3)), SparseUNet(model), make_sde(cfg)


def _mask():
    m = np.zeros((H, H), bool)
    m[0:2, 13:16] = True  # a corner
    m[9:11, 0:1] = True  # an edge
    return m


@pytest.mark.slow  # long (one big program or a statistical run): the slow tier
@pytest.mark.parametrize("kind", ["vp", "ve"])
def test_sparse_sdedit_ncsnpp(kind):
    """mode="dense" (and the recording pass) equal jaxsde.editing.sdedit with the checkpoint's score
    function; sparse == masked along the trajectory; an exact plan keeps the unedited pixels on the
    original's trajectory."""
    if kind == "vp":  # DDPM++ (DDPM blocks, positional embedding of 999 t), inputs in [-1, 1]
        model, params, net, sde = _tiny(DDPMPP_CIFAR10_VP, resblock_type="ddpm")
        x = jnp.tanh(jax.random.normal(jax.random.PRNGKey(1), (H, H, 3)))
        t0 = 0.6
    else:  # NCSN++-like VE: BigGAN blocks, Fourier embedding of sigma, inputs in [0, 1], output / sigma
        model, params, net, sde = _tiny(NCSNPP_CIFAR10_VE, fir=False, progressive="none",
                                        progressive_input="none")
        x = jax.nn.sigmoid(jax.random.normal(jax.random.PRNGKey(1), (H, H, 3)))
        t0 = 0.4
    assert isinstance(sde, jaxsde.VESDE if kind == "ve" else jaxsde.VPSDE)
    mask = _mask()
    xe = jnp.where(mask[..., None], 1.0 - x, x)
    solver = jaxsde.DDIM(3, eta=0.5)  # stochastic: the edit pass must reuse the original's noise
    key = jax.random.PRNGKey(4)
    plan = net.plan(mask, BLOCKS)
    exact = net.plan(mask, BLOCKS, mode="exact", dense_above=1.0)
    assert not plan.dense and not exact.dense
    score = make_score_fn(model, sde)

    @jax.jit
    def run(params):
        dense, orig, cache = sparse_sdedit(key, sde, solver, net, params, x, xe, t0, plan, mode="dense")
        ref = sdedit(key, sde, score(params["params"]), solver, xe, t0).x
        ref_orig = sdedit(key, sde, score(params["params"]), solver, x, t0).x
        sparse, _, _ = sparse_sdedit(key, sde, solver, net, params, x, xe, t0, plan, cache=cache)
        masked, _, _ = sparse_sdedit(key, sde, solver, net, params, x, xe, t0, plan, mode="masked", cache=cache)
        ex, _, _ = sparse_sdedit(key, sde, solver, net, params, x, xe, t0, exact, cache=cache)
        return dense, orig, ref, ref_orig, sparse, masked, ex

    run = jax.jit(run.__wrapped__, compiler_options=FAST)
    dense, orig, ref, ref_orig, sparse, masked, ex = (np.asarray(a) for a in run(params))
    scale = np.abs(ref).max()
    np.testing.assert_allclose(dense, ref, rtol=0, atol=1e-5 * scale)
    np.testing.assert_allclose(orig, ref_orig, rtol=0, atol=1e-5 * scale)
    assert np.abs(dense - orig)[mask].max() > 1e-2 * scale
    np.testing.assert_allclose(sparse, masked, rtol=0, atol=1e-5 * scale)
    outside = ~np.asarray(plan.masks[0])
    np.testing.assert_array_equal(sparse[outside], orig[outside])
    np.testing.assert_array_equal(ex[~mask], orig[~mask])
    assert np.abs(ex - orig)[mask].max() > 1e-2 * scale
    print(f"NCSN++ {kind} SDEdit: max |sparse - dense| on the edited pixels: input plan "
          f"{np.abs(sparse - dense)[mask].max():.3g}, exact plan {np.abs(ex - dense)[mask].max():.3g} "
          f"(scale {scale:.3g})")


def test_sparse_sdedit_ncsnpp_conventions():
    """An NCSNpp takes no timestep= (its label is fixed by the config's SDE)."""
    model, params, net, sde = _tiny(DDPMPP_CIFAR10_VP, resblock_type="ddpm")
    x = jnp.zeros((H, H, 3))
    with pytest.raises(ValueError, match="timestep"):
        sparse_sdedit(jax.random.PRNGKey(0), sde, jaxsde.DDIM(2), net, params, x, x, 0.5, None, mode="dense",
                      timestep=lambda t: t)
