"""galaxygrad's real HSC-32 score model: equinox file -> Flax MLP-Mixer, against galaxygrad's own equinox
forward pass. Uses the weights of the installed wheel (galaxygrad==0.2.1); nothing is copied into the repo."""

import importlib.util
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxsde
from jaxsde.checkpoints import CheckpointError
from jaxsde.checkpoints import galaxygrad as gl
from jaxsde.models.ddpm_unet import param_count

eqx = pytest.importorskip("equinox")
pytest.importorskip("einops")
_spec = importlib.util.find_spec("galaxygrad")  # finds the package without importing it (import fails on Linux)
if _spec is None or _spec.origin is None:
    pytest.skip("galaxygrad==0.2.1 is not installed", allow_module_level=True)
GG_DIR = os.path.dirname(_spec.origin)
WEIGHTS = os.path.join(GG_DIR, "eqx_hsc_ScoreNet32.eqx")
if not os.path.exists(WEIGHTS):
    pytest.skip("galaxygrad's eqx_hsc_ScoreNet32.eqx is missing (galaxygrad != 0.2.1?)", allow_module_level=True)


@pytest.fixture(scope="module")
def ckpt():
    return jaxsde.checkpoints.load(WEIGHTS, "galaxygrad")


@pytest.fixture(scope="module")
def reference():
    spec = importlib.util.spec_from_file_location("galaxygrad_models_eqx", os.path.join(GG_DIR, "models_eqx.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    # the skeleton from shapes only (no random init), filled by equinox's own deserialiser
    net = eqx.filter_eval_shape(mod.ScoreNet, (1, 32, 32), patch_size=4, hidden_size=64, mix_patch_size=512,
                                mix_hidden_size=512, num_blocks=4, t1=10.0, key=jax.random.PRNGKey(42))
    net = eqx.tree_deserialise_leaves(WEIGHTS, net)
    assert net.t1 == 10.0
    return net


def test_parameter_count():
    model = jaxsde.models.build("galaxygrad_hsc32")
    assert param_count(model, (32, 32, 1)) == 605_761  # + the scalar t1 = 605,762 values in the file
    assert sum(r.size for r in gl.read_records(WEIGHTS)) == 605_762


def test_matches_equinox(ckpt, reference):
    assert ckpt.shape == (32, 32, 1) and ckpt.config["num_blocks"] == 4 and ckpt.config["t1"] == 10.0
    sde = ckpt.sde
    assert isinstance(sde, jaxsde.VPSDE) and sde.T == 10.0 and sde.beta_min == sde.beta_max == 1.0
    alpha, sigma = sde.marginal(jnp.float32(2.0))  # beta = 1: alpha = exp(-t/2), sigma^2 = 1 - exp(-t)
    np.testing.assert_allclose([alpha, sigma**2], [np.exp(-1.0), 1 - np.exp(-2.0)], rtol=1e-6)

    rng = np.random.default_rng(0)
    ts = np.array([0.0, 1e-3, 0.1, 1.0, 4.5, 10.0], np.float32)
    y = (3.0 * rng.standard_normal((len(ts), 32, 32, 1))).astype(np.float32)  # log-space scale of the data
    got = np.asarray(jax.jit(jax.vmap(ckpt.score))(jnp.asarray(y), jnp.asarray(ts)))
    ref = jax.jit(jax.vmap(lambda yy, t: reference(yy, t)))
    want = np.asarray(ref(jnp.asarray(y.transpose(0, 3, 1, 2)), jnp.asarray(ts))).transpose(0, 2, 3, 1)
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)
    assert np.abs(want).max() > 1.0

    np.testing.assert_allclose(ckpt.to_data(jnp.log1p(jnp.asarray([0.0, 0.5, 1.0])) / 0.1), [0.0, 0.5, 1.0],
                               atol=1e-6)


def test_few_step_solve_is_finite(ckpt):
    x_T = ckpt.sde.prior_sample(jax.random.PRNGKey(0), ckpt.shape)
    sol = jaxsde.solve(jax.random.PRNGKey(1), ckpt.sde, ckpt.score, jaxsde.DDIM(num_steps=4), x_T)
    x = np.asarray(sol.x)
    assert x.shape == (32, 32, 1) and np.isfinite(x).all()
    assert int(sol.result) == 0 and int(sol.stats.nfe) >= 4
    assert np.isfinite(np.asarray(ckpt.to_data(x))).all()
    # the checkpoint's convention gives the same score as ckpt.score
    t = jnp.asarray(0.5, jnp.float32)
    np.testing.assert_allclose(np.asarray(ckpt.convention.score(ckpt.model.apply, ckpt.params)(x_T, t)),
                               np.asarray(ckpt.score(x_T, t)), rtol=1e-5, atol=1e-6)


def _save(path, records):
    with open(path, "wb") as f:
        for r in records:
            np.save(f, r, allow_pickle=False)


def test_errors(tmp_path):
    records = gl.read_records(WEIGHTS)
    f = tmp_path / "bad.eqx"
    hsc = jaxsde.models.build("galaxygrad_hsc32")

    def expect(*fragments, **options):
        with pytest.raises(CheckpointError) as info:
            gl.load(str(f), **options)
        for frag in fragments:
            assert frag in str(info.value), str(info.value)

    # shape mismatch: named by equinox and Flax paths, equinox shapes
    _save(f, records[:12] + [np.zeros((64, 32), np.float32)] + records[13:])
    expect(str(f), "blocks[0].norm1.weight", "blocks_0/norm1/scale", "expected shape (64, 64)", "found (64, 32)")
    # missing parameters against a required architecture
    _save(f, records[:-3] + records[-1:])
    expect("missing parameters (2)", "expected 55", model=hsc)
    _save(f, records + [np.zeros(3, np.float32)])
    expect("unexpected extra records", model=hsc)
    # truncated inside a record
    data = open(WEIGHTS, "rb").read()
    f.write_bytes(data[: len(data) // 2])
    expect(str(f), "truncated or corrupt")
    # wrong kind of file
    f.write_bytes(b"PK\x03\x04 a zip, or anything else")
    expect("not an equinox/NumPy record file")
    # a pickled object record is refused (allow_pickle=False), never executed
    with open(f, "wb") as fh:
        np.save(fh, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    expect("record 0")
