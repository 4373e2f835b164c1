"""Spatially sparse inference for editing (SIGE-style) on the DigitsUNet family, diffusers' DDPM
UNet2D and NCSN++ / DDPM++.

Idea (Li et al., "Efficient Spatially Sparse Inference for Conditional GANs and Diffusion
Models", NeurIPS 2022; https://www.cs.cmu.edu/~sige/): when an edit touches a small region,
run the network on the *original* image once and cache every layer's output; for the edited
image, recompute each convolution only on the tiles that the edit touches and take every
other value from the cache. This package is an independent JAX implementation of that idea
(no code from the SIGE repository), written as explicit functional forward passes over the
Flax params trees of :class:`jaxsde.models.unet.DigitsUNet`,
:class:`jaxsde.models.ddpm_unet.UNet2D` (ddpm-cifar10's layout: GroupNorm two-pass variance,
explicit paddings, scale_shift time conditioning, any activation, self-attention) and
:class:`jaxsde.models.ncsnpp.NCSNpp` (score_sde's DDPM++ and NCSN++ configurations: BigGAN or
DDPM blocks, naive or FIR resampling, the input / output pyramids, single-head attention; only
FIR kernels over 4 taps raise ``NotImplementedError``; :mod:`~jaxsde.sparse.ncsnpp`).

Pieces:

* :class:`SparseUNet` (``net = SparseUNet(model)``): ``net.apply(params, x, t)`` (dense, equals
  ``model.apply`` on one sample), ``net.record(params, x, t) -> (eps, cache)`` (dense, with
  every layer's output and every GroupNorm's statistics), ``net.apply_sparse(params, x, t,
  cache, plan)`` and ``net.apply_masked(params, x, t, cache, plan)`` (the dense reference
  with the same semantics as the sparse engine), ``net.apply_frozen(params, x, t, cache)``
  (the dense network with the cached GroupNorm statistics).
* The in-place fast path: ``net.pad_cache(cache)`` (or ``net.record(..., padded=True)``) stores the
  maps with the engine's zero border once; ``net.apply_sparse_inplace(params, x, t, padded, plan)
  -> (out, padded)``, jitted with the cache donated, writes the active tiles into the cached maps
  themselves (``apply_sparse`` pads every map and copies it per call: a pass over the whole cache);
  ``net.save_tiles`` / ``net.restore_tiles`` (separate jitted calls) give the original cache back.
* :meth:`SparseUNet.plan` (host side, numpy): the edit mask -> active tiles, in one of two modes
  (below), tile counts padded to buckets so that a new edit of similar size reuses a compiled
  program, or a dense fallback when the edit is large (estimated convolution FLOPs above
  ``dense_above`` of dense). :func:`plan_tiles` is the input mode's per-level tiling alone.
* :func:`sparse_sdedit`: SDEdit of an edited image with a fixed-grid solver, reusing the
  original image's per-step cache (same key, same grid), sparse, masked or dense; DigitsUNet,
  UNet2D and NCSNpp (the score_sde checkpoints' conventions); eagerly a Python loop of one jitted
  program per step over the pre-padded, donated step caches (in place; pass one
  :class:`StepPrograms` to every call of a session to compile those programs once), under a trace a
  ``lax.scan``.

Semantics of the sparse engine (what :meth:`SparseUNet.apply_masked` computes densely):
every layer ``L`` (a convolution with its fused pre-op ``act(GroupNorm(.))``, post-op bias,
residual and scale) writes ``out_L = where(active_L, L(mixed inputs), cache_L)``, ``active_L`` the
layer's active tiles; the inputs it reads, including the halo of a 3x3 convolution around a
tile, are the *mixed* maps (cache outside the active tiles). With a ``roi`` (exact plans) the
final output is ``where(roi, out, cached output)``. The sparse engine computes exactly this,
touching only the active tiles: it gathers each tile with its halo (2 for a 3x3 convolution
at stride 1; 2b + 1 input rows for a stride-2 tile of size b; the low-resolution halo for a
nearest-upsample + conv; 2b + 4 input rows for a 2x2-average-pool + conv, NCSN++'s BigGAN
down blocks; for a FIR resampling (``upfirdn``: NCSN++'s FIR up / downsampling and the blur
before its fused stride-2 conv, or after its fused transposed conv, reordered) the input window
whose resampled rows are the conv's window, resampled with a static phase and zeroed outside the
resampled map; a layer may have no convolution: a parameter-free resampling), stacks the tiles on the
batch axis, convolves with VALID padding, and scatters into the cached output map. A layer's
residual branch may be resampled before its optional 1x1 convolution (BigGAN blocks:
``Conv_2(resample(x))``; a 1x1 NIN shortcut is the same 1x1 convolution); its tiles are
gathered at the residual's resolution and resampled.
``out_scale`` may be a traced scalar (NCSN++'s division by sigma at the output layer). A layer
whose bucket is every tile of its map is computed as a dense layer on the mixed maps followed by
the same ``where`` (cheaper than gathering everything); a layer with no active tile is the
cache. All maps are kept with a zero border of ``PAD`` pixels, so the image edge is the
convolution's zero padding (the halo of an edge tile is zero *after* the fused normalisation +
activation, as in the dense network).

Plans (``net.plan(mask, blocks, mode=...)``):

* ``mode="input"`` (default; :func:`plan_tiles`): every layer recomputes the tiles of the
  (optionally ``dilate``-grown) edit mask at its resolution. Cheap, but an approximation: a
  3x3 convolution changes its output one pixel beyond its changed input, so cached values
  just outside the tiles are stale and the error reaches the edited pixels; growing the mask
  (``dilate``) shrinks it (the error against ``dilate`` is measured in
  ``benchmarks/results/editing.md``).
* ``mode="exact"`` (receptive-field-exact): the network graph is traced once per image size
  and the changed-input mask is propagated layer by layer (:func:`propagate`, numpy): forward,
  the pixels each layer's output changes (3x3 footprint at stride 1, the stride-2 and
  upsample+conv footprints, the union over concatenated skips and the residual branch);
  backward from the output ``roi`` (default the edit mask; ``"all"`` for every pixel), the
  pixels the roi depends on. A layer recomputes the tiles holding any pixel that is both
  changed and needed, buckets per layer (``per_octave=4`` sub-octave buckets, less padding;
  layers above ``layer_dense_above`` of their tiles are computed densely). With
  ``stats="reuse"`` the result on the roi equals :meth:`SparseUNet.apply_frozen` (the dense
  network with the original's GroupNorm statistics) to float rounding, tested at 1e-5; the
  output outside the roi is the cached original, so in an SDEdit trajectory x keeps changing
  only on the edit mask and one plan holds for every step. The price: the receptive field of
  a UNet is wide (38 px radius for the 2-level "large" DigitsUNet), so the active region is
  much larger than the edit, and the saving is smaller than the edited fraction suggests
  (speed-ups by image size and edited fraction: ``benchmarks/results/editing.md`` and
  ``editing_256.md``). The default
  ``dense_above`` is 0.75 for exact plans.

GroupNorm statistics: ``stats="reuse"`` (default, SIGE's choice): the mean and variance of
the original image's activations at the same step, from the cache; normalisation is then a
per-channel affine map, local, and the sparse layer equals the masked-dense layer exactly.
``stats="recompute"``: statistics of the current mixed map (a full-map reduction per
normalisation, O(HWC), no convolution work). Either way the statistics are global: in the
true dense network on the edited image every pixel's normalisation changes a little, which
the mask propagation does not follow (it treats normalisation as a per-pixel map). So even
an exact plan differs from the *true* dense network: with ``reuse`` by exactly the
frozen-statistics network's deviation; with ``recompute`` by the stale cached values outside
the active region whose inputs changed only through the statistics (and, for a ``roi``
smaller than the image, the computed-but-unneeded tile pixels that enter the statistics).
Both are measured by the tests and by ``benchmarks/editing.py`` (``benchmarks/results/editing.md``);
they vanish with the dense fallback.
Attention (UNet2D): ``(attend(norm(x)) + x) / scale`` with queries from the active tiles only
and keys/values projected from the whole *mixed* map (cache outside the active tiles, the new
values inside) -- a dense O(HW C^2) projection and O(n_active HW C) attention at that level,
no convolution work; its GroupNorm statistics follow ``stats`` like the others. Attention is
global, so for an exact plan every layer after the first attention on the changed path is
changed (and needed) everywhere: on ddpm-cifar10's layout (attention at 16x16 of a 32x32 input)
the exact plan is close to dense, and the input plan is the useful (approximate) one.

Modules: :mod:`~jaxsde.sparse.plan` (tile plans, :func:`plan_tiles`), :mod:`~jaxsde.sparse.graph`
(the traced layer graph, :func:`propagate`), :mod:`~jaxsde.sparse.engine` (the dense and sparse
engines and their primitives), :mod:`~jaxsde.sparse.digits` and :mod:`~jaxsde.sparse.unet2d` (the
functional forward passes; :mod:`~jaxsde.sparse.ncsnpp` for NCSN++ / DDPM++),
:mod:`~jaxsde.sparse.net` (:class:`SparseUNet`), :mod:`~jaxsde.sparse.trajectory` (fixed-grid
trajectories with per-step caches: scan or Python loop), :mod:`~jaxsde.sparse.sdedit` (SDEdit),
:mod:`~jaxsde.sparse.params` (random weights).
"""

from .engine import PAD
from .graph import propagate
from .net import SparseUNet
from .params import random_params
from .plan import TilePlan, bucket_size, diff_mask, plan_tiles
from .sdedit import sparse_sdedit
from .trajectory import StepPrograms, cache_bytes, run_fixed_grid, run_fixed_grid_loop

__all__ = ["SparseUNet", "TilePlan", "plan_tiles", "propagate", "diff_mask", "bucket_size", "sparse_sdedit",
           "run_fixed_grid", "run_fixed_grid_loop", "StepPrograms", "cache_bytes", "PAD", "random_params"]
