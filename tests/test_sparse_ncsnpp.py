"""Spatially sparse inference (jaxsde.sparse) on NCSN++ / DDPM++ (jaxsde.models.ncsnpp.NCSNpp):
the functional forward equals the Flax module, sparse == masked reference, exact plans == the
frozen-statistics dense network on the roi, the traced mask propagation == the changed pixels."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from compile_options import loop_emitters

from jaxsde.models.ncsnpp import CONFIGS, DDPMPP_CIFAR10_VP, NCSNPP_CIFAR10_VE, NCSNpp, get_config
from jaxsde.sparse import SparseUNet, propagate, random_params

H = 16
BLOCKS = (4, 2)
# tiny networks, many programs: XLA's backend optimisations cost more compile time than they save (and the
# loop emitters compile faster: tests/compile_options.py)
FAST = {"xla_backend_optimization_level": 0, **loop_emitters()}


def _jit(fn, **kw):
    return jax.jit(fn, compiler_options=FAST, **kw)


def _config(base=DDPMPP_CIFAR10_VP, **overrides):
    """A tiny DDPM++ (score_sde's ddpmpp layout: fir=False, no progressive paths, skip_rescale), or
    a tiny ``base``."""
    tiny = dict(nf=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,), image_size=H)
    return base.replace(**{**tiny, **overrides})


def _net(base=DDPMPP_CIFAR10_VP, **overrides):
    model = NCSNpp(_config(base, **overrides))
    return model, random_params(model, (1, H, H, 3)), SparseUNet(model)


class Case:
    """One tiny DDPM++, its jit-compiled passes (each compiled once per module) and the original image's record."""

    def __init__(self, kind):
        self.kind = kind
        if kind == "biggan":  # the VE conventions: Fourier embedding of sigma, inputs in [0, 1], / sigma
            self.model, self.params, self.net = _net(resblock_type="biggan", embedding_type="fourier",
                                                     scale_by_sigma=True, centered=False)
            self.t = jnp.float32(2.5)
        elif kind == "ncsnpp":  # NCSN++ (VE): FIR resampling in the BigGAN blocks, the residual input pyramid
            # (and the residual output pyramid: its fused FIR upsample + conv)
            self.model, self.params, self.net = _net(NCSNPP_CIFAR10_VE, progressive="residual")
            self.t = jnp.float32(2.5)
        elif kind == "skips":  # DDPM blocks with FIR, parameter-free resampling, the skip pyramids
            self.model, self.params, self.net = _net(resblock_type="ddpm", fir=True, resamp_with_conv=False,
                                                     progressive="output_skip", progressive_input="input_skip")
            self.t = jnp.float32(500.0)
        else:  # DDPM blocks, the VP conventions: positional embedding of the label t * 999
            self.model, self.params, self.net = _net(resblock_type="ddpm")
            self.t = jnp.float32(321.0)
        net = self.net
        flax_apply = _jit(self.model.apply)
        self.apply = lambda params, x, t: flax_apply(params, x[None], t[None])[0]  # the true dense network
        self.sparse = _jit(net.apply_sparse, static_argnums=5)
        self.masked = _jit(net.apply_masked, static_argnums=5)
        # (t an argument, not a closure constant: XLA would constant-fold the time embedding differently)
        self.frozen_record = _jit(lambda p, x, t, c: _frozen_record(net, p, x, t, c))
        self.x = jax.random.normal(jax.random.PRNGKey(1), (H, H, 3))
        self.out, self.cache = _jit(net.record)(self.params, self.x, self.t)
        self.last = net.graph((H, H)).layers[-1]["name"]  # the output layer


@pytest.fixture(scope="module", params=["biggan", "ddpm", "ncsnpp"])
def case(request):
    return Case(request.param)


def _mask():
    """An edit touching a corner, an edge and a tile border in the middle."""
    m = np.zeros((H, H), bool)
    m[0:2, 13:16] = True
    m[9:11, 0:1] = True
    m[6:8, 7:9] = True
    return m


def _frozen_record(net, params, x, t, cache):
    """Every layer's output of the dense network with the cached GroupNorm statistics."""
    from jaxsde.sparse.engine import DenseEngine

    eng = DenseEngine(cache, None, "reuse")
    net._forward(eng, params, x, t)
    return {k: v for k, v in eng.record.items() if not k.startswith("stats/")}


def test_ncsnpp_dense_equals_flax(case):
    """The functional forward (recording) equals NCSNpp.apply on a batch of one; BigGAN resamples
    inside its blocks (layers that pool / upsample, residuals through them), DDPM with strided convs."""
    ref = case.apply(case.params, case.x, case.t)
    np.testing.assert_allclose(np.asarray(case.out), np.asarray(ref), rtol=0, atol=1e-5)
    graph = case.net.graph((H, H))
    kinds = {(L.get("pool", False), L["up"], L.get("res_resample")) for L in graph.layers if not L["attention"]}
    cfg = case.model.config
    if cfg.fir:  # FIR resampling (a Resample) before Conv_0 and in the residual; the pyramids' blur + stride 2
        # and FIR upsampling + conv
        firs = [(L["name"], L["fir"].level_shift, L["stride"]) for L in graph.layers if L.get("fir") is not None]
        assert {(1, 1), (-1, 1), (0, 2)} == {f[1:] for f in firs}
        assert ("Downsample_0", 0, 2) in firs and ("Upsample_0", -1, 1) in firs
        assert sum(not isinstance(L.get("res_resample"), str | None) for L in graph.layers) == 2
    elif cfg.resblock_type == "biggan":
        assert {(True, False, None), (False, False, "down"), (False, True, None), (False, False, "up")} <= kinds
    else:
        assert {(False, False, None), (False, True, None)} == kinds
        assert any(L["stride"] == 2 for L in graph.layers if not L["attention"])


def test_ncsnpp_sparse_equals_masked_and_frozen(case):
    """Input plan: sparse == masked reference. Exact plan (roi = the edit, stats="reuse"): sparse
    == masked reference, and == the frozen-statistics dense network on the roi; outside the roi
    the cached original, bit for bit."""
    params, t, cache, out = case.params, case.t, case.cache, np.asarray(case.out)
    mask = _mask()
    xe = jnp.where(mask[..., None], -case.x + 0.5, case.x)
    plan = case.net.plan(mask, BLOCKS)
    assert not plan.dense and plan.counts[1] < plan.totals[1]  # the attention level takes the sparse-query path
    s = np.asarray(case.sparse(params, xe, t, cache, plan, "reuse"))
    np.testing.assert_allclose(s, np.asarray(case.masked(params, xe, t, cache, plan, "reuse")), rtol=0, atol=1e-5)
    outside = ~np.asarray(plan.masks[0])
    np.testing.assert_array_equal(s[outside], out[outside])

    exact = case.net.plan(mask, BLOCKS, mode="exact", dense_above=1.0)
    assert not exact.dense and exact.mode == "exact"
    # some layers are sparse, some (after the global attention) dense
    assert 0 < min(n for n in exact.layer_counts if n) < max(exact.layer_counts) == exact.tile_total(0)
    e = np.asarray(case.sparse(params, xe, t, cache, exact, "reuse"))
    np.testing.assert_allclose(e, np.asarray(case.masked(params, xe, t, cache, exact, "reuse")), rtol=0, atol=1e-5)
    frozen = np.asarray(case.frozen_record(params, xe, t, cache)[case.last])  # (the output layer's record)
    if case.kind == "ncsnpp":  # the same engine as SparseUNet.apply_frozen (one more compile, in one case)
        np.testing.assert_array_equal(np.asarray(_jit(case.net.apply_frozen)(params, xe, t, cache)), frozen)
    np.testing.assert_allclose(e[mask], frozen[mask], rtol=0, atol=1e-5)
    np.testing.assert_array_equal(e[~mask], out[~mask])
    assert np.abs(e - out)[mask].max() > 1e-2  # the edit did change the output
    true = np.asarray(case.apply(params, xe, t))
    print(f"{case.kind}: max |exact - frozen| on the roi {np.abs(e - frozen)[mask].max():.2e}, "
          f"max |exact - true dense| on the roi {np.abs(e - true)[mask].max():.2e}, "
          f"max |input plan - true dense| on the edit {np.abs(s - true)[mask].max():.2e}")


def test_ncsnpp_propagation_equals_the_changed_pixels(case):
    """The traced graph's mask propagation (3x3, stride-2, pool + conv, upsample + conv, resampled
    residuals, concatenated skips, global attention) marks exactly the pixels whose value changes,
    layer by layer (frozen statistics); every layer's cache entry is traced."""
    net, cache, mask = case.net, case.cache, _mask()
    xe = jnp.where(mask[..., None], case.x - 2.0, case.x)
    rec = case.frozen_record(case.params, xe, case.t, cache)
    prop = propagate(net.graph((H, H)), mask)
    assert set(prop) == {name for name in cache if not name.startswith("stats/")}
    for name, (changed, _) in prop.items():
        empirical = np.asarray(jnp.any(rec[name] != cache[name], axis=-1))
        np.testing.assert_array_equal(empirical, changed, err_msg=name)
    assert not all(c.all() for c, _ in prop.values())


def test_ncsnpp_full_edit_equals_dense(case):
    """Every tile active with recomputed statistics: the true network; the default plan falls
    back to dense (the dense network's program: no gather / scatter)."""
    params, t, cache, net = case.params, case.t, case.cache, case.net
    xe = case.x[::-1]
    true = np.asarray(case.apply(params, xe, t))
    everything = np.ones((H, H), bool)
    exact = net.plan(everything, BLOCKS, mode="exact", roi="all", dense_above=1.0, layer_dense_above=1.0)
    assert not exact.dense and all(b == exact.tile_total(r) for (_, r, b) in exact.layers)
    s = np.asarray(case.sparse(params, xe, t, cache, exact, "recompute"))
    np.testing.assert_allclose(s, true, rtol=0, atol=1e-5)
    fallback = net.plan(everything, BLOCKS)
    assert fallback.dense and net.plan(everything, BLOCKS, mode="exact").dense
    jaxpr = str(jax.make_jaxpr(net.apply_sparse)(params, xe, t, cache, fallback))
    assert "scatter" not in jaxpr and "conv_general_dilated" in jaxpr


def test_ncsnpp_skip_pyramids_fir_ddpm_blocks():
    """DDPM blocks with FIR resampling and no resampling convs (parameter-free FIR layers), the
    input-skip (Combine) and output-skip pyramids: the functional forward equals Flax; an exact
    plan's sparse pass equals its masked reference and the frozen-statistics network on the roi."""
    case = Case("skips")
    graph = case.net.graph((H, H))
    names = [L["name"] for L in graph.layers]
    assert {"Combine_0", "Downsample_1", "Upsample_1", "Conv_2"} <= set(names) and names[-1] == "Conv_2"
    assert all(L["cost"] == 0 for L in graph.layers if L["name"] in ("Downsample_1", "Upsample_1"))
    np.testing.assert_allclose(np.asarray(case.out), np.asarray(case.apply(case.params, case.x, case.t)), rtol=0,
                               atol=1e-5)
    mask = _mask()
    xe = jnp.where(mask[..., None], case.x + 1.0, case.x)
    exact = case.net.plan(mask, BLOCKS, mode="exact", dense_above=1.0)
    e = np.asarray(case.sparse(case.params, xe, case.t, case.cache, exact, "reuse"))
    m = np.asarray(case.masked(case.params, xe, case.t, case.cache, exact, "reuse"))
    np.testing.assert_allclose(e, m, rtol=0, atol=1e-5)
    frozen = np.asarray(case.frozen_record(case.params, xe, case.t, case.cache)[case.last])
    np.testing.assert_allclose(e[mask], frozen[mask], rtol=0, atol=1e-5)


@pytest.mark.parametrize("which, kernel", [(w, (1, 3, 3, 1)) for w in ("up2", "down2", "blur", "up_conv")]
                         + [(w, (1, 2, 1)) for w in ("up2", "down2", "blur", "up_conv")]
                         + [("nearest2", None), ("pool2", None)])
def test_resample_windows_and_footprints(which, kernel):
    """Each FIR resampling: the tracer's footprint (``reads``) is exactly the rows an input row
    changes, and a window (``window``) resamples to the same rows as the whole map."""
    from jaxsde.sparse.engine import PAD, Resample

    r = getattr(Resample, which)(*(() if kernel is None else (kernel,)))
    n = 8
    x = np.asarray(jax.random.normal(jax.random.PRNGKey(0), (n, n, 2)))
    y = np.asarray(r(jnp.asarray(x)))
    assert y.shape[0] == r.out_size(n)
    R = r.reads(n)
    for j in range(n):
        bumped = x.copy()
        bumped[j] += 1.0
        changed = np.any(np.asarray(r(jnp.asarray(bumped))) != y, axis=(1, 2))
        np.testing.assert_array_equal(changed, R[:, j] > 0, err_msg=f"input row {j}")
    xp = np.pad(x, ((PAD, PAD), (PAD, PAD), (0, 0)))
    yp = np.pad(y, ((1, 1), (1, 1), (0, 0)))  # rows -1 and out_size: outside the map (zeroed by the engine)
    b = 2  # windows of b + 2 rows starting at even origins minus 1 (a 3x3 conv's halo), and of b rows
    for rows, shift in ((b + 2, -1), (b, 0)):
        for y0 in range(shift, y.shape[0] - rows + 1 + (shift < 0), 2):
            org, size, pad = r.window(jnp.array([[y0, y0]]), rows, shift)
            win = xp[None, int(org[0, 0]) + PAD:int(org[0, 0]) + PAD + size, int(org[0, 1]) + PAD:][:, :, :size]
            got = np.asarray(r(jnp.asarray(win), pad))[0]
            assert got.shape[:2] == (rows, rows)
            want = yp[y0 + 1:y0 + 1 + rows, y0 + 1:y0 + 1 + rows]
            inside = (np.arange(y0, y0 + rows) >= 0) & (np.arange(y0, y0 + rows) < y.shape[0])
            np.testing.assert_allclose(got[inside][:, inside], want[inside][:, inside], rtol=0, atol=1e-6)


def test_ncsnpp_input_skip_cat_equals_flax():
    """progressive_combine="cat": the combined skip is a list of two maps (concatenated by its readers)."""
    model, params, net = _net(progressive_input="input_skip", progressive_combine="cat")
    x = jax.random.normal(jax.random.PRNGKey(4), (H, H, 3))
    t = jnp.float32(100.0)
    ref = _jit(model.apply)(params, x[None], t[None])[0]
    out, cache = _jit(net.record)(params, x, t)
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), rtol=0, atol=1e-5)
    graph = net.graph((H, H))
    assert [len(L["srcs"]) for L in graph.layers if L["name"] == "ResnetBlockBigGANpp_2/Conv_0"] == [2]
    assert set(propagate(graph, _mask())) == {k for k in cache if not k.startswith("stats/")}


def test_ncsnpp_unsupported_configs():
    with pytest.raises(NotImplementedError, match="fir_kernel"):
        SparseUNet(NCSNpp(_config(fir=True, fir_kernel=(1, 5, 10, 10, 5, 1))))
    SparseUNet(NCSNpp(_config(fir=True, fir_kernel=(1, 2, 1))))


def test_ncsnpp_supported_configs():
    """score_sde's configurations are accepted (the CIFAR-10 ones; CelebA-HQ / FFHQ's skip pyramids
    and their traced graphs at 64x64)."""
    for name in CONFIGS:
        assert SparseUNet(NCSNpp(get_config(name))).levels == 4
    model = NCSNpp(_config(NCSNPP_CIFAR10_VE, image_size=64, ch_mult=(1, 2, 2), progressive="output_skip",
                           progressive_input="input_skip", attn_resolutions=(16,)))
    graph = SparseUNet(model).graph((64, 64))
    assert graph.shapes[graph.layers[-1]["out"]] == (64, 64, 3)
