"""A checkpoint's ScoreConvention: the same score as ``ckpt.score``, and what sparse editing asks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxsde
from jaxsde.editing import sdedit
from jaxsde.models.score import ScoreConvention
from jaxsde.sparse import SparseUNet, sparse_sdedit


@pytest.fixture(scope="module")
def ckpt():
    return jaxsde.pretrained("digits-small")


def test_embedded_convention_gives_the_checkpoint_score(ckpt):
    assert isinstance(ckpt.convention, ScoreConvention)
    x = jax.random.normal(jax.random.PRNGKey(0), (3, *ckpt.shape))
    t = jnp.asarray([0.02, 0.3, 0.9], jnp.float32)
    want = jax.jit(jax.vmap(ckpt.score))(x, t)  # (jitted: eager Flax dispatches op by op)
    got = jax.jit(jax.vmap(ckpt.convention.score(ckpt.model.apply, ckpt.params)))(x, t)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)
    assert float(jnp.abs(want).max()) > 0.1  # not a trivial output


def test_sparse_sdedit_asks_the_checkpoint(ckpt):
    """Dense sparse_sdedit with ``convention=ckpt.convention`` reproduces jaxsde's sdedit with
    ``ckpt.score`` (same keys and noise), and the sparse pass stays close to it."""
    net = SparseUNet(ckpt.model)
    key = jax.random.PRNGKey(3)
    x = jnp.tanh(jax.random.normal(jax.random.PRNGKey(1), ckpt.shape))
    mask = np.zeros(ckpt.shape[:2], bool)
    mask[4:10, 6:14] = True
    xe = jnp.where(mask[..., None], -x, x)
    solver = jaxsde.DDIM(3)

    @jax.jit
    def run(params):
        dense, _, cache = sparse_sdedit(key, ckpt.sde, solver, net, params, x, xe, 0.6, None, mode="dense",
                                        convention=ckpt.convention)
        ref = sdedit(key, ckpt.sde, ckpt.score_fn(params), solver, xe, 0.6).x
        return dense, ref

    dense, ref = (np.asarray(a) for a in run(ckpt.params))
    np.testing.assert_allclose(dense, ref, rtol=0, atol=1e-4)
    assert not np.allclose(dense, np.asarray(xe), atol=1e-2)  # the edit did something


def test_convention_and_options_conflict(ckpt):
    net = SparseUNet(ckpt.model)
    x = jnp.zeros(ckpt.shape)
    with pytest.raises(ValueError, match="convention"):
        sparse_sdedit(jax.random.PRNGKey(0), ckpt.sde, jaxsde.DDIM(2), net, ckpt.params, x, x, 0.5, None,
                      mode="dense", convention=ckpt.convention, parameterization="eps")
    with pytest.raises(TypeError, match="ScoreConvention"):
        sparse_sdedit(jax.random.PRNGKey(0), ckpt.sde, jaxsde.DDIM(2), net, ckpt.params, x, x, 0.5, None,
                      mode="dense", convention=(lambda x, t: (x, t)))
