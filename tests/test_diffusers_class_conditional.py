"""Class-conditional diffusers ``UNet2DModel`` checkpoints (issue #21): synthetic models written by
diffusers' own ``save_pretrained`` (config.json + safetensors, the published layout), loaded with
``jaxsde.checkpoints.load(dir, "diffusers")`` and compared with diffusers' forward on the same inputs.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxsde
from jaxsde.checkpoints import CheckpointError
from jaxsde.checkpoints import diffusers as dl
from jaxsde.models import ddpm_unet

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

K = 5  # classes of the embedding-table model
# Tiny: 8x8x2, two levels, one attention block each way (runs in seconds on a CPU).
BASE = dict(
    sample_size=8, in_channels=2, out_channels=2, block_out_channels=(16, 32), layers_per_block=1,
    norm_num_groups=8, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
    up_block_types=("AttnUpBlock2D", "UpBlock2D"), attention_head_dim=None, flip_sin_to_cos=False, freq_shift=1,
)
SCHEDULER = {"_class_name": "DDPMScheduler", "beta_schedule": "linear", "num_train_timesteps": 1000}
# float32 agreement with diffusers, as tests/test_ddpm_unet.py
TOL = dict(atol=1e-4, rtol=1e-4)


def _torch_model(**cfg):
    torch.manual_seed(0)
    model = diffusers.UNet2DModel(**{**BASE, **cfg}).eval()
    with torch.no_grad():
        for p in model.parameters():  # zero-initialised out-convs would hide mapping bugs
            p.add_(0.02 * torch.randn_like(p))
    return model


def _save(model, folder):
    model.save_pretrained(folder)  # config.json + diffusion_pytorch_model.safetensors, as published
    with open(folder / "scheduler_config.json", "w") as f:
        json.dump(SCHEDULER, f)
    return folder


def _reference(model, x_nhwc, timesteps, class_labels):
    with torch.no_grad():
        x = torch.from_numpy(np.asarray(x_nhwc).transpose(0, 3, 1, 2).copy())
        out = model(x, torch.from_numpy(np.array(timesteps, np.float32)),
                    class_labels=torch.from_numpy(np.array(class_labels))).sample
    return out.numpy().transpose(0, 2, 3, 1)


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    """``num_class_embeds=K``, ``class_embed_type`` null: an ``nn.Embedding`` added to the time embedding."""
    model = _torch_model(num_class_embeds=K)
    return model, _save(model, tmp_path_factory.mktemp("cond"))


def test_embedding_table_score_matches_diffusers(table):
    model, folder = table
    ckpt = jaxsde.checkpoints.load(str(folder), "diffusers")
    assert ckpt.num_classes == K and ckpt.null_cond is None and ckpt.shape == (8, 8, 2)
    assert ddpm_unet.param_count(ckpt.model, ckpt.shape) == sum(p.numel() for p in model.parameters())
    assert ckpt.params["params"]["class_embedding"]["embedding"].shape == (K, ckpt.model.time_embed_dim)

    # every label, and label 2 at three times; integer and fractional diffusers timesteps
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 8, 8, 2)).astype(np.float32).repeat(K + 2, axis=0)
    x[K:] = rng.standard_normal((2, 8, 8, 2))
    t = jnp.asarray([0.501] * K + [0.011, 0.12425], jnp.float32)  # diffusers timesteps 500, 10, 123.25
    labels = np.asarray([0, 1, 2, 3, 4, 2, 2], np.int32)
    score = np.asarray(jax.jit(jax.vmap(ckpt.score))(jnp.asarray(x), t, jnp.asarray(labels)))
    sigma = np.asarray(ckpt.sde.marginal(t)[1]).reshape(-1, 1, 1, 1)
    want = _reference(model, x, np.asarray(ckpt.sde.timestep(t)), labels)  # eps
    np.testing.assert_allclose(-score * sigma, want, **TOL)
    assert np.abs(want).max() > 0.1
    # the labels matter: the same x and t with different labels give clearly different outputs
    for a in range(K):
        for b in range(a + 1, K):
            assert np.abs(want[a] - want[b]).max() > 1e-2, (a, b)
            assert np.abs(score[a] - score[b]).max() > 1e-2 / sigma[0, 0, 0, 0], (a, b)

    # the checkpoint's convention (what code calling the network itself uses) gives the same score
    conv = jax.jit(jax.vmap(ckpt.convention.cond_score(ckpt.model.apply, ckpt.params)))
    np.testing.assert_allclose(np.asarray(conv(jnp.asarray(x), t, jnp.asarray(labels))), score, rtol=1e-5, atol=1e-6)
    # score_fn(params) builds the same function for (traced) params
    again = jax.jit(lambda p, x, t, c: ckpt.score_fn(p)(x, t, c))(ckpt.params, jnp.asarray(x[0]), t[0], 3)
    np.testing.assert_allclose(np.asarray(again), score[3], rtol=1e-5, atol=1e-5)


def test_labels_checked_when_concrete_nan_when_traced(table):
    _, folder = table
    ckpt = dl.load(str(folder))
    x, t = jnp.zeros((8, 8, 2)), jnp.float32(0.5)
    for bad in (K, -1, 100):
        with pytest.raises(ValueError, match=f"label {bad} is outside 0..{K - 1}"):
            ckpt.score(x, t, jnp.int32(bad))
    with pytest.raises(TypeError, match="integer"):
        ckpt.score(x, t, jnp.float32(1.0))
    with pytest.raises(ValueError, match="scalar"):
        ckpt.score(x, t, jnp.asarray([1, 2], jnp.int32))
    # traced (inside jit / vmap, as in jaxsde.sample(..., cond=labels)): no error, a NaN score
    out = np.asarray(jax.jit(jax.vmap(ckpt.score, in_axes=(None, None, 0)))(x, t, jnp.asarray([-1, K, 0, K - 1])))
    assert np.isnan(out[:2]).all() and np.isfinite(out[2:]).all()
    # the network alone: an out-of-range label selects a NaN embedding row
    net = np.asarray(jax.jit(ckpt.model.apply)(ckpt.params, x[None].repeat(2, 0), jnp.full((2,), 3.0),
                                                jnp.asarray([1, K])))
    assert np.isfinite(net[0]).all() and np.isnan(net[1]).all()


def test_null_class_and_guidance(table):
    _, folder = table
    plain = dl.load(str(folder))
    with pytest.raises(ValueError, match="null condition"):  # diffusers has no null-class convention
        jaxsde.guidance.classifier_free(plain.score, plain.null_cond, 1.0)
    ckpt = jaxsde.checkpoints.load(str(folder), "diffusers", null_class=K - 1)
    assert ckpt.num_classes == K and int(ckpt.null_cond) == K - 1 and ckpt.null_cond.dtype == jnp.int32
    guided = jaxsde.guidance.classifier_free(ckpt.score, ckpt.null_cond, 2.0)
    x = jnp.asarray(np.random.default_rng(3).standard_normal((8, 8, 2)), jnp.float32)
    t, c = jnp.float32(0.3), jnp.int32(1)
    score = jax.jit(ckpt.score)
    want = 3.0 * score(x, t, c) - 2.0 * score(x, t, ckpt.null_cond)
    np.testing.assert_allclose(np.asarray(jax.jit(guided)(x, t, c)), np.asarray(want), rtol=1e-5, atol=1e-4)
    for bad in (K, -1, True, 1.0):
        with pytest.raises(CheckpointError, match="null_class"):
            dl.load(str(folder), null_class=bad)
    with pytest.raises(CheckpointError, match="disagrees"):
        dl.load(str(folder), num_classes=K + 1)


def test_timestep_class_embedding_matches_diffusers(tmp_path):
    """``class_embed_type="timestep"``: labels through the time sinusoid and a second TimestepEmbedding."""
    model = _torch_model(class_embed_type="timestep", num_class_embeds=3)
    folder = _save(model, tmp_path / "ts")
    ckpt = dl.load(str(folder))
    assert ckpt.num_classes == 3 and set(ckpt.params["params"]["class_embedding"]) == {"linear_1", "linear_2"}
    x = np.random.default_rng(1).standard_normal((3, 8, 8, 2)).astype(np.float32)
    ts, labels = np.asarray([0.0, 7.5, 999.0], np.float32), np.asarray([0, 1, 2], np.int32)
    got = np.asarray(jax.jit(ckpt.model.apply)(ckpt.params, jnp.asarray(x), jnp.asarray(ts), jnp.asarray(labels)))
    np.testing.assert_allclose(got, _reference(model, x, ts, labels), **TOL)
    # diffusers ignores num_class_embeds for "timestep"; without it the class count must be given
    cfg = {k: v for k, v in json.loads((folder / "config.json").read_text()).items() if k != "num_class_embeds"}
    with pytest.raises(CheckpointError, match="num_classes="):
        dl.load(str(folder), config=cfg)
    assert dl.load(str(folder), config=cfg, num_classes=7).num_classes == 7


def test_identity_class_embedding_network_matches_diffusers(tmp_path):
    """``class_embed_type="identity"``: the network (UNet2D) agrees; the loader refuses it (not a class label)."""
    model = _torch_model(class_embed_type="identity")
    folder = _save(model, tmp_path / "id")
    with pytest.raises(CheckpointError, match="identity"):
        dl.load(str(folder))
    net = ddpm_unet.UNet2D.from_config(json.loads((folder / "config.json").read_text()))
    x = np.random.default_rng(2).standard_normal((2, 8, 8, 2)).astype(np.float32)
    emb = np.random.default_rng(3).standard_normal((2, net.time_embed_dim)).astype(np.float32)
    ts = np.asarray([10.0, 600.0], np.float32)
    expected = jax.eval_shape(net.init, jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 2)), jnp.zeros((1,)),
                              *ddpm_unet.example_class_labels(net))
    sd = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    params = {"params": dl.convert_state_dict(sd, expected["params"])}
    got = np.asarray(jax.jit(net.apply)(params, jnp.asarray(x), jnp.asarray(ts), jnp.asarray(emb)))
    np.testing.assert_allclose(got, _reference(model, x, ts, emb), **TOL)


def test_config_and_call_errors(table):
    _, folder = table
    cfg = json.loads((folder / "config.json").read_text())
    with pytest.raises(CheckpointError, match="unsupported class_embed_type 'projection'"):
        dl.load(str(folder), config={**cfg, "class_embed_type": "projection"})
    with pytest.raises(CheckpointError, match="num_class_embeds"):
        dl.load(str(folder), config={**cfg, "num_class_embeds": 0})
    # a table of the wrong size, in torch names and shapes
    with pytest.raises(CheckpointError, match=rf"class_embedding.weight.*expected shape \({K + 1}, 64\)"):
        dl.load(str(folder), config={**cfg, "num_class_embeds": K + 1})
    net = ddpm_unet.UNet2D.from_config(cfg)
    uncond = ddpm_unet.UNet2D.from_config({**cfg, "num_class_embeds": None})
    x, t = jnp.zeros((1, 8, 8, 2)), jnp.zeros((1,))
    with pytest.raises(ValueError, match="pass class_labels"):
        jax.eval_shape(net.init, jax.random.PRNGKey(0), x, t)
    with pytest.raises(ValueError, match="takes no class_labels"):
        jax.eval_shape(uncond.init, jax.random.PRNGKey(0), x, t, jnp.zeros((1,), jnp.int32))
    assert ddpm_unet.example_class_labels(uncond) == ()
    # an unconditional checkpoint refuses the class options
    with pytest.raises(CheckpointError, match="class-conditional"):
        dl.load(str(folder), config={**cfg, "num_class_embeds": None}, null_class=0)
