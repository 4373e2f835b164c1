"""The diffusers loader's score calls ONE jitted network: a sampling program traces it once, whatever
the number of call sites (solver steps, the final Tweedie step, the driver's shape check), and the
outputs are unchanged."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxsde
from jaxsde.models.ddpm_unet import UNet2D
from jaxsde.models.score import output_to_score

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

SMALL = dict(sample_size=16, in_channels=3, out_channels=3, block_out_channels=(32, 64), layers_per_block=1,
             norm_num_groups=8, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
             up_block_types=("AttnUpBlock2D", "UpBlock2D"), attention_head_dim=None)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("unet")
    torch.manual_seed(0)
    diffusers.UNet2DModel(**SMALL).save_pretrained(str(folder), safe_serialization=True)
    return str(folder)


@pytest.fixture
def ckpt(folder):
    return jaxsde.checkpoints.load(folder, "diffusers")  # a fresh jitted network: nothing traced yet


def unshared_score(ckpt, params):
    """The score as the loader computed it before: ``model.apply`` called directly at each call site."""
    def score(x, t):
        t = jnp.asarray(t, x.dtype)
        out = ckpt.model.apply(params, x[None], ckpt.sde.timestep(t)[None])[0]
        return output_to_score(ckpt.sde, out, x, t, "eps")

    return score


def n_traces(fn, *args) -> int:
    """How many times lowering ``fn`` runs the UNet's ``__call__`` (traces the network)."""
    count = [0]

    def interceptor(next_fun, a, kw, context):
        if isinstance(context.module, UNet2D) and context.method_name == "__call__":
            count[0] += 1
        return next_fun(*a, **kw)

    with nn.intercept_methods(interceptor):
        jax.jit(fn).lower(*args)
    return count[0]


def test_score_unchanged(ckpt):
    x = jnp.asarray(np.random.default_rng(0).standard_normal((4, 16, 16, 3)), jnp.float32)
    t = jnp.asarray([0.001, 0.3, 0.77, 1.0], jnp.float32)
    got = jax.jit(jax.vmap(ckpt.score_fn(ckpt.params)))(x, t)
    want = jax.jit(jax.vmap(unshared_score(ckpt, ckpt.params)))(x, t)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6, atol=1e-6)


def test_sampling_program_traces_the_network_once(ckpt):
    """DDIM with the final Tweedie step calls the network at three sites (the driver's shape check,
    the loop body, finalize): traced once (three times without sharing), and the samples agree."""
    keys = jax.random.split(jax.random.PRNGKey(0), 3)
    x_T = jax.random.normal(jax.random.PRNGKey(1), (3, 16, 16, 3))
    solver = jaxsde.DDIM(4)

    def program(score_fn):
        return lambda p, x: jaxsde.solve_batch(keys, ckpt.sde, score_fn(p), solver, x, denoise=True)

    shared, unshared = program(ckpt.score_fn), program(lambda p: unshared_score(ckpt, p))
    assert n_traces(shared, ckpt.params, x_T) == 1
    assert n_traces(unshared, ckpt.params, x_T) >= 2
    a, b = jax.jit(shared)(ckpt.params, x_T), jax.jit(unshared)(ckpt.params, x_T)
    np.testing.assert_array_equal(np.asarray(a.stats.nfe), 5)
    np.testing.assert_allclose(np.asarray(a.x), np.asarray(b.x), rtol=1e-5, atol=1e-5)
