"""Draw docs/figures/guidance.png, the picture in the guidance guide (docs/guidance.md).

Run it in this folder: ``cd docs/figures && python guidance.py`` (CPU, under a minute). The
class-conditional digits model, 8 samples of each label (rows 0 to 9) with classifier-free
guidance at weights 0, 1 and 3, DPM-Solver++ 2M with 20 NFE; the same keys in every panel, so
each digit is the same draw at three weights.
"""

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

import jaxsde

model = jaxsde.pretrained("digits-cond")  # embedded, class-conditional: no download
labels = jnp.repeat(jnp.arange(10, dtype=jnp.int32), 8)  # one label per sample


@jax.jit
def run(weight):  # the weight is traced: one compiled program for every weight
    guided = jaxsde.guidance.classifier_free(model.score, model.null_cond, weight)
    return jaxsde.sample(jax.random.PRNGKey(0), model.sde, guided, jaxsde.DPMSolverPP(19), model.shape,
                         len(labels), cond=labels)


lo, hi = model.data_range
weights = (0.0, 1.0, 3.0)
fig, axes = plt.subplots(1, len(weights), figsize=(9, 4))
for ax, w in zip(axes, weights, strict=True):
    sol = run(w)
    x = np.clip((np.asarray(sol.x[..., 0]) - lo) / (hi - lo), 0, 1)  # (80, 8, 8)
    grid = np.pad(x, ((0, 0), (1, 0), (1, 0)), constant_values=1).reshape(10, 8, 9, 9)
    ax.imshow(grid.transpose(0, 2, 1, 3).reshape(90, 72), cmap="gray", vmin=0, vmax=1)
    ax.set_title(f"w = {w:g} (NFE {int(sol.stats.nfe[0])})", fontsize=10)
    ax.set_xticks([])
    ax.set_yticks(9 * np.arange(10) + 5, [str(c) for c in range(10)], fontsize=7)
    ax.tick_params(length=0)
fig.tight_layout()
fig.savefig("guidance.png", dpi=100)
