"""NCSN++ / DDPM++ Flax port: published parameter counts and layout, FIR resampling and embeddings
against diffusers' torch implementations, and the config switches on small models."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from keymaps import KEYMAPS, flat_paths, read_keymap

from jaxsde.checkpoints import score_sde
from jaxsde.models import build, fir, layerspp, ncsnpp

SMALL = dict(nf=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), image_size=8)


def _count(tree) -> int:
    return sum(int(np.prod(a.shape)) for a in jax.tree_util.tree_leaves(tree))


@pytest.mark.parametrize("name, count", [
    ("ncsnpp_cifar10_ve", 62_758_915), ("ncsnpp_deep_cifar10_ve", 107_587_075),
    ("ddpmpp_cifar10_vp", 61_804_419), ("ddpmpp_deep_cifar10_vp", 106_632_579),
])
def test_published_param_counts(name, count):
    model = build(name)
    assert isinstance(model, ncsnpp.NCSNpp)
    assert _count(score_sde.expected_params(model)) == count


@pytest.mark.parametrize("name", sorted(KEYMAPS))
def test_layout_matches_keymap_tables(name):
    """Every Flax path of the key-map table exists with the table's shape (after its transform), the
    top-level keys are those of the table, and our PyTorch layout reproduces the table row by row."""
    rows = read_keymap(name)
    model = build(name)
    expected = score_sde.expected_params(model)
    flat = {k: tuple(v.shape) for k, v in flat_paths(expected).items()}
    for torch_key, shape, flax_path, transform in rows:
        if transform.startswith("transpose"):
            perm = [int(i) for i in transform[len("transpose("):-1].split(",")]
            shape = tuple(shape[p] for p in perm)
        assert flat.get(flax_path) == shape, (torch_key, flax_path, shape, flat.get(flax_path))
    assert len(flat) == len(rows)
    tops = list(dict.fromkeys(r[2].split("/")[1] for r in rows))
    assert sorted(tops) == sorted(expected)
    assert [m[0] for m in score_sde.call_order(model) if len(m) == 1 and m[0] in expected] == tops
    layout = score_sde.torch_layout(model)
    assert layout == [(r[0][len("module."):], r[2][len("params/"):], r[3], r[1]) for r in rows]


# ---------------------------------------------------------------------------- diffusers cross-checks


@pytest.fixture(scope="module")
def torch_mods():
    torch = pytest.importorskip("torch")
    pytest.importorskip("diffusers")
    from diffusers.models import downsampling, embeddings, upsampling
    torch.manual_seed(0)
    return torch, upsampling, downsampling, embeddings


def _nhwc(t):
    return t.detach().numpy().transpose(0, 2, 3, 1)


def test_fir_resampling_matches_diffusers(torch_mods):
    torch, upsampling, downsampling, _ = torch_mods
    x = torch.randn(2, 4, 8, 8)
    xj = jnp.asarray(_nhwc(x))
    up, down = upsampling.FirUpsample2D(4, 4), downsampling.FirDownsample2D(4, 4)
    np.testing.assert_allclose(fir.upsample_2d(xj), _nhwc(up(x)), atol=1e-5)
    np.testing.assert_allclose(fir.downsample_2d(xj), _nhwc(down(x)), atol=1e-5)
    # With the fused 3x3 convolution (score_sde's Conv2d up/down), OIHW -> HWIO, random bias.
    upc = upsampling.FirUpsample2D(4, 6, use_conv=True)
    downc = downsampling.FirDownsample2D(4, 6, use_conv=True)
    with torch.no_grad():
        for m in (upc, downc):
            m.Conv2d_0.bias.normal_()
            ref = _nhwc(m(x))
            conv = layerspp.Conv2d(6, up=m is upc, down=m is downc)
            params = {"weight": m.Conv2d_0.weight.numpy().transpose(2, 3, 1, 0), "bias": m.Conv2d_0.bias.numpy()}
            np.testing.assert_allclose(conv.apply({"params": params}, xj), ref, atol=1e-5)
    # The general upfirdn with an asymmetric kernel and odd padding.
    k = np.random.default_rng(0).random((3, 3)).astype(np.float32)
    for up_, down_, pad in [(2, 1, (2, 1)), (1, 2, (1, 0))]:
        ref = upsampling.upfirdn2d_native(x, torch.tensor(k), up=up_, down=down_, pad=pad)
        np.testing.assert_allclose(fir.upfirdn2d(xj, k, up=up_, down=down_, pad=pad), _nhwc(ref), atol=1e-5)


def test_embeddings_match_diffusers(torch_mods):
    torch, _, _, embeddings = torch_mods
    sigma = torch.tensor([0.01, 0.3, 5.0, 50.0])
    ref = embeddings.GaussianFourierProjection(embedding_size=16, scale=16.0, log=True, flip_sin_to_cos=False)
    proj = layerspp.GaussianFourierProjection(embedding_size=16, scale=16.0)
    out = proj.apply({"params": {"W": ref.weight.detach().numpy()}}, jnp.log(jnp.asarray(sigma.numpy())))
    np.testing.assert_allclose(out, ref(sigma).detach().numpy(), atol=1e-4, rtol=1e-5)
    t = torch.tensor([0.0, 1.5, 250.0, 999.0])
    ref = embeddings.get_timestep_embedding(t, 32, flip_sin_to_cos=False, downscale_freq_shift=1)
    np.testing.assert_allclose(layerspp.timestep_embedding(jnp.asarray(t.numpy()), 32), ref.numpy(), atol=1e-4)


# ---------------------------------------------------------------------------- small models


def test_config_switches_on_a_one_level_model():
    """Dropout off at inference (on with ``train=True``), ``scale_by_sigma`` divides by sigma,
    ``centered=False`` maps [0, 1] inputs to ``2x - 1``. One resolution level keeps compilation cheap."""
    tiny = dict(nf=8, ch_mult=(1,), num_res_blocks=1, attn_resolutions=(4,), image_size=4)
    model = ncsnpp.ncsnpp_cifar10_ve(**tiny)
    unscaled = ncsnpp.ncsnpp_cifar10_ve(**tiny, scale_by_sigma=False, centered=True)
    rng = np.random.default_rng(0)
    params = jax.tree_util.tree_map(lambda s: jnp.asarray(0.2 * rng.normal(size=s.shape), jnp.float32),
                                    score_sde.expected_params(model))
    x = jnp.asarray(rng.random((2, 4, 4, 3)), jnp.float32)
    sigma = jnp.array([0.05, 3.0])

    @jax.jit
    def outputs(params, key):
        out = model.apply({"params": params}, x, sigma)
        out_train = model.apply({"params": params}, x, sigma, train=True, rngs={"dropout": key})
        return out, out_train, unscaled.apply({"params": params}, 2 * x - 1, sigma)

    out, out_train, raw = outputs(params, jax.random.PRNGKey(3))
    assert out.shape == x.shape and bool(jnp.all(jnp.isfinite(out)))
    assert not np.allclose(out_train, out)
    np.testing.assert_allclose(raw / sigma[:, None, None, None], out, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("overrides", [
    dict(progressive="output_skip", progressive_input="input_skip", progressive_combine="cat"),
    dict(progressive="residual", progressive_input="residual", fir=False),
    dict(resblock_type="ddpm", embedding_type="positional", fir=False, progressive_input="none"),
])
def test_other_score_sde_variants_trace(overrides):
    """The progressive / DDPM-block variants of score_sde build and give the input's shape (traced only)."""
    model = ncsnpp.ncsnpp_cifar10_ve(**SMALL, **overrides)
    x = jax.ShapeDtypeStruct((1, 8, 8, 3), jnp.float32)
    t = jax.ShapeDtypeStruct((1,), jnp.float32)
    params = jax.eval_shape(model.init, jax.random.PRNGKey(0), x, t)
    assert jax.eval_shape(model.apply, params, x, t).shape == x.shape


def test_config_validation():
    with pytest.raises(ValueError, match="embedding_type"):
        ncsnpp.NCSNppConfig(embedding_type="learned")
    cfg = ncsnpp.NCSNppConfig(ch_mult=[1, 2])
    assert cfg.ch_mult == (1, 2) and hash(cfg)
    with pytest.raises(ValueError, match="unknown NCSN"):
        ncsnpp.get_config("nope")
