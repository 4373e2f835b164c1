"""The public registries: every named model builds; unknown names and kinds give clear errors."""

import jax
import jax.numpy as jnp
import pytest

import jaxsde


@pytest.mark.parametrize("name", jaxsde.models.names())
def test_every_name_builds(name):
    model = jaxsde.models.build(name)
    assert callable(getattr(model, "apply", None))


def test_digits_matches_the_embedded_model():
    ckpt = jaxsde.pretrained("digits")
    model = jaxsde.models.build("digits")
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, *ckpt.shape)), jnp.zeros((1,)))
    assert jax.tree_util.tree_structure(shapes) == jax.tree_util.tree_structure(ckpt.params)


def test_unknown_names():
    with pytest.raises(ValueError, match="valid names: .*ddpm_cifar10"):
        jaxsde.models.build("unet9000")
    with pytest.raises(ValueError, match="valid kinds: score_sde, score_sde_pytorch, diffusers, galaxygrad"):
        jaxsde.checkpoints.load("x", "onnx")
