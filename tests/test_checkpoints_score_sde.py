"""score_sde (Flax msgpack State) and score_sde_pytorch (.pth) loaders on synthetic checkpoints that
reproduce the published layouts (checkpoints.md §2, §7): small configs, random weights."""

from __future__ import annotations

import collections
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import serialization
from keymaps import KEYMAPS, flat_paths, read_keymap, to_flax

import jaxsde
from jaxsde import checkpoints
from jaxsde.checkpoints import CheckpointError, score_sde
from jaxsde.models import ncsnpp

# Two levels (FIR down/up blocks, the residual input pyramid, attention at the lower resolution).
VE_SMALL = ncsnpp.get_config("ncsnpp_cifar10_ve", nf=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,),
                             image_size=8)
# One level: the VP path has no resampling layers, so the cheapest model to compile suffices.
VP_TINY = ncsnpp.get_config("ddpmpp_cifar10_vp", nf=8, ch_mult=(1,), num_res_blocks=1, attn_resolutions=(4,),
                            image_size=4)


def _random_params(cfg, seed, fourier_from=None):
    rng = np.random.default_rng(seed)
    shapes = score_sde.expected_params(ncsnpp.NCSNpp(cfg))
    params = jax.tree_util.tree_map(lambda s: (0.2 * rng.normal(size=s.shape)).astype(np.float32), shapes)
    if fourier_from is not None:  # the fixed Fourier W is the same in the raw and the EMA weights
        params["GaussianFourierProjection_0"] = fourier_from["GaussianFourierProjection_0"]
    return params


def _write_flax(path, ema, raw, **changes):
    state = {"step": np.int32(100), "optimizer": {"target": raw, "state": {"step": np.int32(100)}},
             "lr": np.float32(2e-4), "model_state": {}, "ema_rate": np.float32(0.999), "params_ema": ema,
             "rng": np.array([0, 42], np.uint32), **changes}
    path.write_bytes(serialization.msgpack_serialize(state))
    return str(path)


def _write_pth(path, cfg, ema, raw, shadow_hook=None, **changes):
    torch = pytest.importorskip("torch")
    model = ncsnpp.NCSNpp(cfg)
    sd = collections.OrderedDict(
        [("module.sigmas", torch.linspace(50, 0.01, 1000))]
        + [("module." + k, torch.from_numpy(v)) for k, v in score_sde.flax_to_torch_state_dict(raw, model).items()])
    shadow = [torch.from_numpy(v) for k, v in score_sde.flax_to_torch_state_dict(ema, model).items()
              if k != "all_modules.0.W"]
    if shadow_hook:
        shadow = shadow_hook(shadow)
    obj = {"optimizer": {"state": {}, "param_groups": []}, "model": sd,
           "ema": {"decay": 0.999, "num_updates": 100, "shadow_params": shadow}, "step": 100, **changes}
    torch.save(obj, str(path))
    return str(path)


@pytest.fixture(scope="module")
def ve(tmp_path_factory):
    """Small VE model: EMA and raw weights, their files in both layouts, one compiled forward pass."""
    folder = tmp_path_factory.mktemp("score_sde_ve")
    ema = _random_params(VE_SMALL, 0)
    raw = _random_params(VE_SMALL, 1, fourier_from=ema)
    apply = jax.jit(ncsnpp.NCSNpp(VE_SMALL).apply)
    x = jnp.asarray(np.random.default_rng(2).random((1, 8, 8, 3)), jnp.float32)
    return dict(ema=ema, raw=raw, apply=lambda p, s: apply({"params": p}, x, jnp.array([s])), x=x, folder=folder,
                flax=_write_flax(folder / "checkpoint_3", ema, raw))


def _assert_tree_close(a, b):
    fa, fb = jax.tree_util.tree_flatten_with_path(a)[0], jax.tree_util.tree_flatten_with_path(b)[0]
    assert [p for p, _ in fa] == [p for p, _ in fb]
    for (p, x), (_, y) in zip(fa, fb, strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), err_msg=str(p), rtol=1e-6, atol=1e-7)


def test_load_flax_uses_params_ema(ve):
    ckpt = checkpoints.load(ve["flax"], "score_sde", config=VE_SMALL)
    _assert_tree_close(ckpt.params, ve["ema"])
    np.testing.assert_allclose(ve["apply"](ckpt.params, 0.7), ve["apply"](ve["ema"], 0.7), rtol=1e-6)
    assert not np.allclose(ve["apply"](ve["raw"], 0.7), ve["apply"](ve["ema"], 0.7))
    assert isinstance(ckpt.sde, jaxsde.VESDE) and (ckpt.sde.sigma_min, ckpt.sde.sigma_max) == (0.01, 50.0)
    assert ckpt.sde.eps == 1e-5 and ckpt.data_range == (0.0, 1.0) and ckpt.shape == (8, 8, 3)
    assert ckpt.name == "checkpoint_3" and ckpt.config["nf"] == 16
    _assert_tree_close(score_sde.load_flax(ve["flax"], VE_SMALL, use_ema=False).params, ve["raw"])


def test_load_flax_infers_the_config(ve):
    """Fourier W -> VE NCSN++; nf, ch_mult, num_res_blocks from the blocks; the image size is an option."""
    ckpt = score_sde.load_flax(ve["flax"], image_size=8, attn_resolutions=(4,))
    assert ckpt.config == VE_SMALL.to_dict()
    # No Fourier W but a FIR input pyramid: NCSN++ trained with the VP SDE (labels 999 t).
    vp_ncsnpp = ncsnpp.get_config("ncsnpp_cifar10_vp", **{k: VE_SMALL.to_dict()[k] for k in
                                                          ("nf", "ch_mult", "num_res_blocks")})
    params = _random_params(vp_ncsnpp, 5)
    assert "GaussianFourierProjection_0" not in params and "Conv2d_0" in params["Downsample_0"]
    path = _write_flax(ve["folder"] / "checkpoint_vp", params, params)
    ckpt = score_sde.load_flax(path)
    assert ckpt.config == vp_ncsnpp.to_dict() and isinstance(ckpt.sde, jaxsde.VPSDE)


def test_load_pytorch_uses_the_ema_list(ve):
    path = _write_pth(ve["folder"] / "checkpoint_3.pth", VE_SMALL, ve["ema"], ve["raw"])
    ckpt = checkpoints.load(path, "score_sde_pytorch")  # config inferred, image size assumed 32
    assert ckpt.config == VE_SMALL.replace(image_size=32, attn_resolutions=(16,)).to_dict()
    ckpt = score_sde.load_pytorch(path, VE_SMALL)
    _assert_tree_close(ckpt.params, ve["ema"])
    np.testing.assert_allclose(ve["apply"](ckpt.params, 2.0), ve["apply"](ve["ema"], 2.0), rtol=1e-6)
    _assert_tree_close(score_sde.load_pytorch(path, VE_SMALL, use_ema=False).params, ve["raw"])


def test_ema_list_order_and_exclusions(ve):
    torch = pytest.importorskip("torch")
    path = _write_pth(ve["folder"] / "order.pth", VE_SMALL, ve["ema"], ve["raw"])
    obj = torch.load(path, weights_only=True)
    keys = list(obj["model"])
    shadow = obj["ema"]["shadow_params"]
    # sigmas (a buffer) and the Fourier W (requires_grad=False) are not in the list.
    assert keys[:2] == ["module.sigmas", "module.all_modules.0.W"] and len(shadow) == len(keys) - 2
    named = score_sde.ema_state_dict(path, {k[7:]: v for k, v in obj["model"].items()}, obj["ema"])
    assert named["all_modules.0.W"] is obj["model"]["module.all_modules.0.W"]
    assert named["all_modules.1.weight"] is shadow[0] and named[keys[-1][7:]] is shadow[-1]
    # Order matters: swapping two same-shaped shadow entries swaps the loaded weights.
    i, j = 1, 3  # all_modules.1.bias and all_modules.2.bias (Dense_0/bias, Dense_1/bias), both (64,)
    assert [keys[2 + i], keys[2 + j]] == ["module.all_modules.1.bias", "module.all_modules.2.bias"]

    def swap(s):
        s = list(s)
        s[i], s[j] = s[j], s[i]
        return s

    swapped = score_sde.load_pytorch(_write_pth(ve["folder"] / "swapped.pth", VE_SMALL, ve["ema"], ve["raw"],
                                                shadow_hook=swap), VE_SMALL)
    np.testing.assert_array_equal(swapped.params["Dense_0"]["bias"], ve["ema"]["Dense_1"]["bias"])
    for hook, match in [(lambda s: s[:-1], "shadow parameters but 'model' has"),
                        (lambda s: s[:2] + [s[2][:3]] + s[3:], r"all_modules.2.weight: expected shape \(64, 64\)")]:
        bad = _write_pth(ve["folder"] / "bad_ema.pth", VE_SMALL, ve["ema"], ve["raw"], shadow_hook=hook)
        with pytest.raises(CheckpointError, match=match):
            score_sde.load_pytorch(bad, VE_SMALL)


def test_vp_pytorch_checkpoint_and_score(tmp_path):
    ema, raw = _random_params(VP_TINY, 3), _random_params(VP_TINY, 4)
    path = _write_pth(tmp_path / "checkpoint_8.pth", VP_TINY, ema, raw)
    ckpt = score_sde.load_pytorch(path, image_size=4, attn_resolutions=(4,))  # no Fourier W -> VP DDPM++
    assert ckpt.config == VP_TINY.to_dict()
    assert isinstance(ckpt.sde, jaxsde.VPSDE) and not isinstance(ckpt.sde, jaxsde.SubVPSDE)
    assert ckpt.data_range == (-1.0, 1.0) and ckpt.sde.eps == 1e-3
    _assert_tree_close(ckpt.params, ema)
    x = jnp.asarray(np.random.default_rng(5).normal(size=(4, 4, 3)), jnp.float32)
    t = 0.3

    @jax.jit
    def both(p):
        out = ncsnpp.NCSNpp(VP_TINY).apply({"params": p}, x[None], jnp.array([999 * t]))[0]
        return ckpt.score_fn(p)(x, t), out

    score, out = both(ckpt.params)
    _, std = ckpt.sde.marginal(t)
    np.testing.assert_allclose(score, -out / std, rtol=1e-5, atol=1e-5)
    sub = score_sde.load_pytorch(path, "ddpmpp_cifar10_vp", sde="subvpsde", nf=8, ch_mult=(1,), num_res_blocks=1,
                                 attn_resolutions=(4,), image_size=4)
    assert isinstance(sub.sde, jaxsde.SubVPSDE)


def test_ve_score_and_solve_with_a_loaded_checkpoint(ve):
    """``score(x, t)`` is the network output at label sigma(t) (already a score), for one sample; a
    few Euler-Maruyama steps of ``jaxsde.solve`` with traced params give a finite sample."""
    ckpt = score_sde.load_flax(ve["flax"], VE_SMALL)
    key = jax.random.PRNGKey(0)
    x_T = ckpt.sde.prior_sample(key, ckpt.shape)
    t = 0.6

    @jax.jit
    def run(p, k, x_T):
        score = ckpt.score_fn(p)
        return score(ve["x"][0], t), jaxsde.solve(k, ckpt.sde, score, jaxsde.EulerMaruyama(3), x_T)

    score, sol = run(ckpt.params, key, x_T)
    sigma = 0.01 * (50 / 0.01) ** t
    np.testing.assert_allclose(score, ve["apply"](ve["ema"], sigma)[0], rtol=2e-4, atol=1e-4)
    assert sol.x.shape == (8, 8, 3) and bool(jnp.all(jnp.isfinite(sol.x)))
    assert int(sol.result) == 0 and int(sol.stats.nfe) == 4
    # the checkpoint's convention (what sparse editing calls the network with) gives the same score
    by_convention = ckpt.convention.score(lambda p, x, label: ckpt.model.apply({"params": p}, x, label), ckpt.params)
    np.testing.assert_allclose(jax.jit(by_convention)(ve["x"][0], t), score, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------- errors


def _drop(tree, key):
    return {k: v for k, v in tree.items() if k != key}


def test_flax_errors_name_file_path_and_shapes(ve, tmp_path):
    ema = ve["ema"]
    cases = [
        (_drop(ema, "Conv_1"), r"missing parameters \(2\): Conv_1/bias, Conv_1/kernel"),
        ({**ema, "Extra_0": {"kernel": np.zeros((2, 2), np.float32)}}, r"unexpected parameters \(1\): Extra_0/kernel"),
        ({**ema, "Conv_0": {**ema["Conv_0"], "kernel": np.zeros((3, 3, 3, 8), np.float32)}},
         r"Conv_0/kernel: expected shape \(3, 3, 3, 16\), found \(3, 3, 3, 8\)"),
    ]
    for i, (params, match) in enumerate(cases):
        path = _write_flax(tmp_path / f"checkpoint_{i}", params, ve["raw"])
        with pytest.raises(CheckpointError, match=match) as err:
            score_sde.load_flax(path, VE_SMALL)
        assert path in str(err.value)
    # Inference cannot explain 9 blocks of these widths (16, 16, 16, 32, ...), and says so.
    blocks = _drop(ema, "ResnetBlockBigGANpp_9")
    with pytest.raises(CheckpointError, match="could not infer the architecture from 9 ResnetBlockBigGANpp"):
        score_sde.load_flax(_write_flax(tmp_path / "checkpoint_9", blocks, ve["raw"]))


def test_wrong_kind_truncated_and_corrupt_files(ve, tmp_path):
    torch = pytest.importorskip("torch")
    pth = _write_pth(tmp_path / "checkpoint_1.pth", VE_SMALL, ve["ema"], ve["raw"])
    data = open(ve["flax"], "rb").read()
    (tmp_path / "truncated").write_bytes(data[: len(data) // 2])
    (tmp_path / "truncated.pth").write_bytes(open(pth, "rb").read()[:5000])
    (tmp_path / "noise").write_bytes(np.random.default_rng(0).bytes(4096))
    (tmp_path / "other_state").write_bytes(serialization.msgpack_serialize({"params": {"w": np.zeros(3)}, "x": 1}))
    torch.save({"state_dict": {"w": torch.zeros(3)}}, str(tmp_path / "other.pth"))
    cases = [
        (score_sde.load_flax, pth, "not a readable msgpack|not a score_sde"),
        (score_sde.load_flax, str(tmp_path / "truncated"), "not a readable msgpack"),
        (score_sde.load_flax, str(tmp_path / "noise"), "not a readable msgpack|not a score_sde"),
        (score_sde.load_flax, str(tmp_path / "other_state"), "no 'params_ema'"),
        (score_sde.load_pytorch, ve["flax"], "not a readable PyTorch checkpoint"),
        (score_sde.load_pytorch, str(tmp_path / "truncated.pth"), "not a readable PyTorch checkpoint"),
        (score_sde.load_pytorch, str(tmp_path / "other.pth"), "no 'model' state dict"),
    ]
    for load, path, match in cases:
        with pytest.raises(CheckpointError, match=match) as err:
            load(path, VE_SMALL)
        assert path in str(err.value), (load, path)


class _NotAllowed:
    """Pickled into a .pth: weights_only loading must refuse it (no pickled code runs)."""


def test_pytorch_errors(ve, tmp_path, monkeypatch):
    torch = pytest.importorskip("torch")
    path = str(tmp_path / "evil.pth")
    torch.save({"model": {}, "payload": _NotAllowed()}, path)
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        score_sde.load_pytorch(path, VE_SMALL)
    # Missing / unexpected / misshapen entries of the raw weights name the Flax path.
    good = _write_pth(tmp_path / "good.pth", VE_SMALL, ve["ema"], ve["raw"])
    obj = torch.load(good, weights_only=True)
    sd = obj["model"]
    cases = [
        ({k: v for k, v in sd.items() if k != "module.all_modules.3.bias"}, r"missing parameters \(1\): Conv_0/bias"),
        ({**sd, "module.all_modules.99.weight": torch.zeros(2)}, "unexpected parameters.*all_modules.99.weight"),
        ({**sd, "module.all_modules.3.weight": torch.zeros(16, 3, 1, 1)},
         r"Conv_0/kernel: expected shape \(3, 3, 3, 16\), found \(1, 1, 3, 16\)"),
    ]
    for i, (model_sd, match) in enumerate(cases):
        bad = str(tmp_path / f"bad_{i}.pth")
        torch.save({**obj, "model": collections.OrderedDict(model_sd)}, bad)
        with pytest.raises(CheckpointError, match=match) as err:
            score_sde.load_pytorch(bad, VE_SMALL, use_ema=False)
        assert bad in str(err.value)
    with pytest.raises(CheckpointError, match="no 'ema' entry"):
        bad = str(tmp_path / "no_ema.pth")
        torch.save({"model": sd, "step": 1}, bad)
        score_sde.load_pytorch(bad, VE_SMALL)
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(ImportError, match="needs PyTorch"):
        score_sde.load_pytorch(good, VE_SMALL)


# ------------------------------------------------------- checkpoints built from the published tables
@pytest.mark.parametrize("name", sorted(KEYMAPS))
def test_pytorch_checkpoint_from_the_published_key_table(name, tmp_path):
    """A full-size ``.pth`` written from the published key table alone (torch keys, shapes, order;
    no jaxsde converter involved), with distinct raw and EMA weights: ``load_pytorch`` puts every
    tensor at the table's Flax path with the table's transform, takes the EMA list for the weights
    that have one and the Fourier ``W`` from ``'model'``, and infers the published config."""
    torch = pytest.importorskip("torch")
    rows = read_keymap(name)
    rng = np.random.default_rng(0)
    raw = collections.OrderedDict([("module.sigmas", torch.linspace(50, 0.01, 1000))])
    ema = {}
    for key, shape, _, _ in rows:
        raw[key] = torch.from_numpy(rng.standard_normal(shape, dtype=np.float32))
        if key != "module.all_modules.0.W":  # requires_grad=False: not in the EMA list
            ema[key] = torch.from_numpy(rng.standard_normal(shape, dtype=np.float32))
    path = tmp_path / "checkpoint_8.pth"
    torch.save({"optimizer": {"state": {}, "param_groups": []}, "model": raw,
                "ema": {"decay": 0.9999, "num_updates": 8, "shadow_params": list(ema.values())}, "step": 8}, str(path))
    for config in (name, None):  # given, and inferred from the tensors
        ckpt = score_sde.load_pytorch(str(path), config)
        assert ckpt.config == ncsnpp.get_config(name).to_dict()
        flat = flat_paths(ckpt.params)
        assert len(flat) == len(rows)
        for key, _, flax_path, transform in rows:
            source = ema.get(key, raw[key]).numpy()
            np.testing.assert_array_equal(flat[flax_path], to_flax(source, transform), err_msg=key)
    raw_ckpt = score_sde.load_pytorch(str(path), name, use_ema=False)
    key, _, flax_path, transform = rows[-1]
    np.testing.assert_array_equal(flat_paths(raw_ckpt.params)[flax_path], to_flax(raw[key].numpy(), transform))

