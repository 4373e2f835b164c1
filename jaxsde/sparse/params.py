"""Random weights for a U-Net's params tree (tests and benchmarks of the sparse engine)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def random_params(model, shape, seed=0):
    """Random weights of every layer of a Flax ``model`` (``model.init(key, x, t)``) for inputs of
    ``shape`` (numpy; no Flax init, whose compile is slow): kernels ~ N(0, 1/fan_in), norm
    scales ~ 1 + N(0, 0.1^2), biases ~ N(0, 0.1^2), frequencies ~ N(0, 16^2)."""
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros(shape), jnp.zeros(shape[:1]))

    def draw(path, a):
        name = str(path[-1].key)
        if name == "kernel":
            w = rng.normal(0, 1 / np.sqrt(np.prod(a.shape[:-1])), a.shape)
        elif name == "scale":
            w = 1 + 0.1 * rng.normal(size=a.shape)
        elif name == "freqs":
            w = 16 * rng.normal(size=a.shape)
        else:
            w = 0.1 * rng.normal(size=a.shape)
        return jnp.asarray(w, jnp.float32)

    return jax.tree_util.tree_map_with_path(draw, shapes)
