"""diffusers UNet2DModel -> Flax port and loader, against diffusers' own torch model (small configs).

The 35.7M-parameter ddpm_cifar10 network is only counted (jax.eval_shape), never run here.
"""

import json
import os

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
safetensors_numpy = pytest.importorskip("safetensors.numpy")

# The small config: one attention down block and one attention up block, DDPM-style embedding.
SMALL = dict(
    sample_size=16, in_channels=3, out_channels=3, block_out_channels=(32, 64), layers_per_block=1,
    norm_num_groups=8, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
    up_block_types=("AttnUpBlock2D", "UpBlock2D"), downsample_padding=0, flip_sin_to_cos=False, freq_shift=1,
    norm_eps=1e-6, attention_head_dim=None, act_fn="silu",
)
# The other branches: multi-head attention, symmetric downsample padding, flipped sinusoid, centred
# input, scale/shift time conditioning, mid-block scale, two channels in, one out.
VARIANT = dict(
    sample_size=8, in_channels=2, out_channels=1, block_out_channels=(16, 32), layers_per_block=2,
    norm_num_groups=4, down_block_types=("AttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "AttnUpBlock2D"), downsample_padding=1, flip_sin_to_cos=True, freq_shift=0,
    attention_head_dim=8, center_input_sample=True, resnet_time_scale_shift="scale_shift",
    mid_block_scale_factor=1.5, attn_norm_num_groups=2, time_embedding_dim=48,
)
WEIGHTS = "diffusion_pytorch_model.safetensors"
OLD_NAMES = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}


def _torch_model(cfg):
    torch.manual_seed(0)
    model = diffusers.UNet2DModel(**cfg).eval()
    with torch.no_grad():
        for p in model.parameters():  # zero-initialised out-convs would hide mapping bugs
            p.add_(0.02 * torch.randn_like(p))
    return model


def _write(folder, model, cfg, old_names=False, scheduler=None, full_config=False):
    """Write the state dict (safetensors) and config.json: the given fields only, as in the hub's
    diffusers-0.0.4 files, or (full_config) every field as current diffusers saves it."""
    os.makedirs(folder, exist_ok=True)
    sd = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
    if old_names:
        renamed = {}
        for k, v in sd.items():
            for new, old in OLD_NAMES.items():
                if f".{new}." in k and ".attentions." in k:
                    k = k.replace(f".{new}.", f".{old}.")
            renamed[k] = v
        sd = renamed
    safetensors_numpy.save_file(sd, os.path.join(folder, "diffusion_pytorch_model.safetensors"))
    with open(os.path.join(folder, "config.json"), "w") as f:
        if full_config:
            f.write(model.to_json_string())
        else:
            json.dump({"_class_name": "UNet2DModel", "_diffusers_version": "0.0.4", **cfg}, f)
    if scheduler is not None:
        with open(os.path.join(folder, "scheduler_config.json"), "w") as f:
            json.dump(scheduler, f)
    return sd


def _reference(model, x_nhwc, timesteps):
    with torch.no_grad():
        x = torch.from_numpy(np.asarray(x_nhwc).transpose(0, 3, 1, 2).copy())
        out = model(x, torch.tensor(np.asarray(timesteps, np.float32))).sample
    return out.numpy().transpose(0, 2, 3, 1)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddpm")
    model = _torch_model(SMALL)
    sd = _write(root / "new", model, SMALL, scheduler={"_class_name": "DDPMScheduler", "beta_schedule": "linear",
                                                       "num_train_timesteps": 1000})
    _write(root / "old", model, SMALL, old_names=True)
    return model, root, sd


def test_ddpm_cifar10_parameter_count():
    model = jaxsde.models.build("ddpm_cifar10")
    assert ddpm_unet.param_count(model, ddpm_unet.sample_shape(model)) == 35_746_307
    assert ddpm_unet.sample_shape(model) == (32, 32, 3)


@pytest.mark.parametrize("cfg", [SMALL, VARIANT], ids=["small", "variant"])
def test_param_tree_matches_torch(cfg):
    model = ddpm_unet.UNet2D.from_config(cfg)
    n_torch = sum(p.numel() for p in diffusers.UNet2DModel(**cfg).parameters())
    assert ddpm_unet.param_count(model, ddpm_unet.sample_shape(model)) == n_torch


def test_score_matches_diffusers(small):
    """ckpt.score (one sample, label N t - 1, -eps / sigma) against diffusers' eps at integer and
    fractional timesteps; one compilation (vmap over samples and times)."""
    model, root, _ = small
    ckpt = jaxsde.checkpoints.load(str(root / "new"), "diffusers")
    assert isinstance(ckpt.sde, jaxsde.DiscreteVPSDE) and ckpt.sde.num_train_timesteps == 1000
    assert ckpt.shape == (16, 16, 3) and ckpt.data_range == (-1.0, 1.0)
    x = np.random.default_rng(0).standard_normal((5, 16, 16, 3)).astype(np.float32)
    t = jnp.asarray([0.001, 0.011, 0.501, 1.0, 0.12425], jnp.float32)  # labels 0, 10, 500, 999, 123.25
    labels = np.asarray(ckpt.sde.timestep(t))
    np.testing.assert_allclose(labels, [0, 10, 500, 999, 123.25], atol=1e-3)
    score = np.asarray(jax.jit(jax.vmap(ckpt.score))(jnp.asarray(x), t))
    sigma = np.asarray(ckpt.sde.marginal(t)[1]).reshape(-1, 1, 1, 1)
    want = _reference(model, x, labels)  # eps at the same (float32) labels
    np.testing.assert_allclose(-score * sigma, want, atol=1e-4, rtol=1e-4)
    assert np.abs(want).max() > 0.1  # not a trivial output
    # the checkpoint's convention (what sparse editing calls the network with) gives the same score
    by_convention = jax.jit(jax.vmap(ckpt.convention.score(ckpt.model.apply, ckpt.params)))(jnp.asarray(x), t)
    np.testing.assert_allclose(np.asarray(by_convention), score, rtol=1e-5, atol=1e-6)


def test_old_attention_names_and_bin(small, tmp_path):
    model, root, sd = small
    new = jaxsde.checkpoints.load(str(root / "new"), "diffusers")
    old = jaxsde.checkpoints.load(str(root / "old"), "diffusers")
    assert any(".query." in k for k in safetensors_numpy.load_file(str(root / "old" / WEIGHTS)))
    jax.tree_util.tree_map(np.testing.assert_array_equal, new.params, old.params)
    # .bin via torch.load(weights_only=True); direct file path + config dict
    binf = tmp_path / "weights.bin"
    torch.save(model.state_dict(), binf)
    direct = dl.load(str(binf), config=SMALL)
    jax.tree_util.tree_map(np.testing.assert_array_equal, new.params, direct.params)
    assert direct.sde.num_train_timesteps == 1000  # no scheduler config -> DiscreteVPSDE.linear()


def test_variant_matches_diffusers(tmp_path):
    model = _torch_model(VARIANT)
    _write(tmp_path, model, VARIANT, scheduler={"beta_schedule": "squaredcos_cap_v2", "num_train_timesteps": 50,
                                                "prediction_type": "v_prediction"}, full_config=True)
    ckpt = dl.load(str(tmp_path))
    x = np.random.default_rng(1).standard_normal((3, 8, 8, 2)).astype(np.float32)
    ts = np.array([0.0, 7.5, 49.0], np.float32)
    got = np.asarray(jax.jit(ckpt.model.apply)(ckpt.params, jnp.asarray(x), jnp.asarray(ts)))
    np.testing.assert_allclose(got, _reference(model, x, ts), atol=1e-4, rtol=1e-4)
    assert ckpt.sde.num_train_timesteps == 50 and ckpt.config["parameterization"] == "v"


@pytest.mark.parametrize("schedule", ["linear", "scaled_linear", "squaredcos_cap_v2"])
def test_scheduler_sde_matches_diffusers(schedule):
    cfg = {"beta_schedule": schedule, "num_train_timesteps": 1000, "beta_start": 1e-4, "beta_end": 0.02}
    if schedule == "scaled_linear":
        cfg.update(beta_start=0.00085, beta_end=0.012)
    ref = diffusers.DDPMScheduler(**cfg).alphas_cumprod.numpy().astype(np.float64)
    sde = dl.sde_from_scheduler_config(cfg)
    n = np.arange(1000)
    alpha, _ = sde.marginal(jnp.asarray((n + 1) / 1000.0, jnp.float32))
    np.testing.assert_allclose(np.asarray(alpha, np.float64) ** 2, ref, rtol=1e-5, atol=1e-9)
    with pytest.raises(ValueError, match="beta_schedule"):
        dl.sde_from_scheduler_config({"beta_schedule": "sigmoid"})


def _expect_error(path, *fragments, **options):
    with pytest.raises(CheckpointError) as info:
        dl.load(str(path), **options)
    for frag in fragments:
        assert frag in str(info.value), str(info.value)
    return str(info.value)


def test_errors(small, tmp_path):
    _, root, sd = small
    cfg = dict(SMALL)
    f = tmp_path / WEIGHTS

    def save(d):
        safetensors_numpy.save_file(d, str(f))

    # missing key
    save({k: v for k, v in sd.items() if k != "mid_block.attentions.0.to_q.weight"})
    _expect_error(f, str(f), "missing", "mid_block.attentions.0.to_q.weight", config=cfg)
    # unexpected key
    save({**sd, "extra.weight": np.zeros(3, np.float32)})
    _expect_error(f, "unexpected", "extra.weight", config=cfg)
    # shape mismatch, in torch names and shapes
    save({**sd, "conv_in.weight": np.zeros((32, 3, 5, 5), np.float32)})
    _expect_error(f, "conv_in.weight", "expected shape (32, 3, 3, 3)", "found (32, 3, 5, 5)", config=cfg)
    # the same parameter under the old and the new name
    save({**sd, "mid_block.attentions.0.query.weight": sd["mid_block.attentions.0.to_q.weight"]})
    _expect_error(f, "both map to", config=cfg)
    # truncated file
    save(sd)
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])
    _expect_error(f, str(f), "safetensors", config=cfg)
    # wrong kind of file
    f.write_bytes(b"this is not a checkpoint at all")
    _expect_error(f, "not a safetensors file", config=cfg)
    with open(f, "wb") as fh:  # e.g. a galaxygrad .eqx (NumPy records)
        np.save(fh, np.zeros(3, np.float32))
    _expect_error(f, "not a safetensors file", config=cfg)
    # unsupported config
    _expect_error(root / "new" / WEIGHTS, "time_embedding_type='fourier'", config={**cfg, "time_embedding_type":
                                                                                   "fourier"})
    _expect_error(tmp_path / "nothing-here", "no such file")
