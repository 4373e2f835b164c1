"""Draw docs/figures/models.png, the picture in the checkpoints-and-models guide (docs/models.md).

Run it in this folder: ``cd docs/figures && python models.py`` (CPU, about a minute). One row per
embedded model (``jaxsde.checkpoints.embedded.available()``), 16 samples each from the same keys,
every model through ``UniPC(20, order=2)`` from its own ``T``: on the log-SNR grid, on the flow model
(from ``t = 1``) on the uniform grid, as the command line does; ``digits-cond`` draws the classes
0..9, 0..5 (its conditional score, no guidance). The same keys give the same prior draws, hence the
look-alike columns.
"""

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

import jaxsde
from jaxsde.checkpoints.embedded import available

n = 16
rows, names = [], []
for name in available():
    ckpt = jaxsde.pretrained(name)  # embedded: no download
    solver = jaxsde.UniPC(20, order=2, grid="uniform" if ckpt.sde.alpha_vanishes_at_T else "logsnr")
    if name == "digits-cond":
        run = jax.jit(lambda key, ckpt=ckpt, solver=solver: jaxsde.sample(
            key, ckpt.sde, ckpt.score, solver, ckpt.shape, n, cond=jnp.arange(n) % 10))
    else:
        run = jax.jit(lambda key, ckpt=ckpt, solver=solver: jaxsde.sample(key, ckpt.sde, ckpt.score, solver,
                                                                          ckpt.shape, n))
    x = np.asarray(run(jax.random.PRNGKey(0)).x[..., 0])
    lo, hi = ckpt.data_range
    x = np.clip((x - lo) / (hi - lo), 0, 1)
    rows.append(np.pad(x, ((0, 0), (1, 0), (1, 0)), constant_values=1).transpose(1, 0, 2).reshape(9, n * 9))
    names.append(name)

fig, axes = plt.subplots(len(rows), 1, figsize=(8, 0.62 * len(rows)))
for ax, row, name in zip(axes, rows, names, strict=True):
    ax.imshow(row, cmap="gray", vmin=0, vmax=1)
    ax.set_yticks([])
    ax.set_xticks([])
    ax.set_ylabel(name, rotation=0, ha="right", va="center", fontsize=8)
fig.suptitle("16 samples per embedded model from the same keys, UniPC-2, 20 steps", fontsize=9)
fig.tight_layout()
fig.savefig("models.png", dpi=100)
print("wrote models.png")
