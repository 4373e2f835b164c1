"""sparse_sdedit driving diffusers' DDPM UNet2D (timestep labels, epsilon -> score), on a tiny network."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxsde
from jaxsde.editing import sdedit
from jaxsde.models.ddpm_unet import UNet2D
from jaxsde.models.score import output_to_score
from jaxsde.sparse import SparseUNet, random_params, sparse_sdedit

H = 16


@pytest.fixture(scope="module")
def tiny():
    """16x16x3, two levels (16, 32 channels), one resnet per block, one attention block (the mid block's)."""
    model = UNet2D(sample_size=H, in_channels=3, out_channels=3, block_out_channels=(16, 32), layers_per_block=1,
                   down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                   norm_num_groups=8, attention_head_dim=8, downsample_padding=0, norm_eps=1e-6,
                   flip_sin_to_cos=False, freq_shift=1)
    return model, random_params(model, (1, H, H, 3)), SparseUNet(model)


def checkpoint_score(model, params, sde):
    """The score function as jaxsde.checkpoints.diffusers.load builds it (epsilon prediction)."""

    def score(x, t):
        t = jnp.asarray(t, x.dtype)
        out = model.apply(params, x[None], sde.timestep(t)[None])[0]
        return output_to_score(sde, out, x, t, "eps")

    return score


def _images():
    x = jnp.tanh(jax.random.normal(jax.random.PRNGKey(2), (H, H, 3)))
    mask = np.zeros((H, H), bool)
    mask[0:3, 11:16] = True  # top-right corner
    mask[9:12, 0:2] = True  # left edge
    return x, jnp.where(mask[..., None], -x, x), mask


@pytest.mark.slow  # long (one big program or a statistical run): the slow tier
def test_sparse_sdedit_unet2d(tiny):
    """mode="dense" is the fixed-grid solve with the checkpoint's score function (same keys, same
    noise); "masked" == "sparse" (input plan: the mid-block attention takes sparse queries); an exact
    plan keeps the unedited pixels on the original's trajectory; an edit covering everything (every
    tile active, statistics recomputed) is the dense edit."""
    model, params, net = tiny
    sde = jaxsde.DiscreteVPSDE.linear()
    solver = jaxsde.DDIM(3, eta=0.5)  # stochastic: the edit pass must reuse the original's noise
    x, xe, mask = _images()
    xall = -x
    key = jax.random.PRNGKey(4)
    t0 = 0.6
    plan = net.plan(mask, (4, 2))
    assert not plan.dense and plan.counts[1] < plan.totals[1]
    exact = net.plan(mask, (4, 2), mode="exact", dense_above=1.0)
    everything = net.plan(np.ones((H, H), bool), (4, 2), dense_above=1.0)
    assert not everything.dense and everything.counts == everything.totals

    @jax.jit
    def run(params):
        dense, orig, cache = sparse_sdedit(key, sde, solver, net, params, x, xe, t0, plan, mode="dense")
        # the public driver on both images, one trajectory program (vmapped; the same key: the same noise)
        ref, ref_orig = jax.vmap(lambda y: sdedit(key, sde, checkpoint_score(model, params, sde), solver, y, t0).x)(
            jnp.stack([xe, x]))
        sparse, _, _ = sparse_sdedit(key, sde, solver, net, params, x, xe, t0, plan, cache=cache)
        masked, _, _ = sparse_sdedit(key, sde, solver, net, params, x, xe, t0, plan, mode="masked", cache=cache)
        ex, _, _ = sparse_sdedit(key, sde, solver, net, params, x, xe, t0, exact, cache=cache)
        full, _, _ = sparse_sdedit(key, sde, solver, net, params, x, xall, t0, everything, stats="recompute",
                                   cache=cache)
        full_dense, _, _ = sparse_sdedit(key, sde, solver, net, params, x, xall, t0, None, mode="dense", cache=cache)
        return dense, orig, ref, ref_orig, sparse, masked, ex, full, full_dense

    dense, orig, ref, ref_orig, sparse, masked, ex, full, full_dense = (np.asarray(a) for a in run(params))
    # the dense mode (and the recording pass of the original) is the public SDEdit with the checkpoint's score
    np.testing.assert_allclose(dense, ref, rtol=0, atol=1e-4)
    np.testing.assert_allclose(orig, ref_orig, rtol=0, atol=1e-4)
    assert np.abs(dense - orig)[mask].max() > 1e-2
    # the sparse engine equals its masked-dense reference along the whole trajectory
    np.testing.assert_allclose(sparse, masked, rtol=0, atol=1e-5)
    outside = ~np.asarray(plan.masks[0])
    np.testing.assert_array_equal(sparse[outside], orig[outside])
    # the exact plan (roi = the edit mask): x changes only on the edit mask, one plan for every step
    np.testing.assert_array_equal(ex[~mask], orig[~mask])
    assert np.abs(ex - orig)[mask].max() > 1e-2
    # every tile active with recomputed statistics: the dense edit
    np.testing.assert_allclose(full, full_dense, rtol=0, atol=1e-4)
    assert np.abs(full_dense - orig).max() > 1e-1
    print(f"UNet2D SDEdit: max |sparse - dense| on the edited pixels: input plan "
          f"{np.abs(sparse - dense)[mask].max():.3g}, exact plan {np.abs(ex - dense)[mask].max():.3g}")


def test_sparse_sdedit_unet2d_timestep(tiny):
    """The timestep label: an SDE without a timestep map needs timestep=."""
    model, params, net = tiny
    x, xe, mask = _images()
    with pytest.raises(TypeError, match="timestep"):
        sparse_sdedit(jax.random.PRNGKey(0), jaxsde.VPSDE(), jaxsde.DDIM(2), net, params, x, xe, 0.5,
                      net.plan(mask, (4, 2)))
    # a continuous VP SDE with an explicit label map runs (dense == the solve with that score)
    sde = jaxsde.VPSDE()

    def label(t):
        return 999.0 * t

    def score(x_, t):
        t = jnp.asarray(t, x_.dtype)
        return output_to_score(sde, model.apply(params, x_[None], label(t)[None])[0], x_, t, "eps")

    key = jax.random.PRNGKey(1)
    got, _, _ = jax.jit(lambda p: sparse_sdedit(key, sde, jaxsde.DDIM(2), net, p, x, xe, 0.5, None, mode="dense",
                                                timestep=label))(params)
    ref = jax.jit(lambda: sdedit(key, sde, score, jaxsde.DDIM(2), xe, 0.5).x)()
    np.testing.assert_allclose(np.asarray(got), np.asarray(ref), rtol=0, atol=1e-4)
