"""A bfloat16 network (parameters and input cast) computes in bfloat16: every convolution and matmul of
NCSN++ / DDPM++ and of the diffusers UNet2D takes bfloat16 operands (NCSN++'s NumPy ``sqrt(2)`` and float32
time embedding used to promote them to float32), and its output stays close to the float32 network's."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxsde
from jaxsde.models import ddpm_unet
from jaxsde.precision import cast_params, matmul_dtypes

SMALL_NCSNPP = dict(nf=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,), image_size=16)


NETWORKS = {
    "ddpmpp": (lambda: jaxsde.models.build("ddpmpp_cifar10_vp", **SMALL_NCSNPP), (16, 16, 3), [10.0, 700.0]),
    "ncsnpp_ve": (lambda: jaxsde.models.build("ncsnpp_cifar10_ve", **SMALL_NCSNPP), (16, 16, 3), [0.1, 20.0]),
    "unet2d": (lambda: ddpm_unet.ddpm_cifar10(block_out_channels=[32, 64, 64, 64], layers_per_block=1,
                                              norm_num_groups=8), (32, 32, 3), [10.0, 700.0]),
}


# ddpmpp and unet2d take minutes on 2 cores: the slow tier; ncsnpp_ve (the NCSN++ code ddpmpp shares) stays fast
@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in ("ddpmpp", "unet2d") else n
                                  for n in NETWORKS])
def test_bfloat16_network_computes_in_bfloat16(name):
    build, shape, times = NETWORKS[name]
    model = build()
    x = jax.random.normal(jax.random.PRNGKey(1), (2, *shape))
    t = jnp.asarray(times)
    params = jax.jit(model.init)(jax.random.PRNGKey(0), x, t)  # one program, not Flax's op-by-op init
    low = cast_params(params, jnp.bfloat16)
    ops = matmul_dtypes(lambda x, t: model.apply(low, x, t), x.astype(jnp.bfloat16), t.astype(jnp.bfloat16))
    assert ops and set(ops) == {("bfloat16", "bfloat16")}, ops
    assert set(matmul_dtypes(lambda x, t: model.apply(params, x, t), x, t)) == {("float32", "float32")}
    full = np.asarray(jax.jit(model.apply)(params, x, t))
    half = np.asarray(jax.jit(model.apply)(low, x.astype(jnp.bfloat16), t.astype(jnp.bfloat16)), np.float32)
    assert np.linalg.norm(half - full) <= 0.05 * np.linalg.norm(full)
