"""Draw docs/figures/samples.png, the picture on the start page (docs/index.md).

Run it in this folder: ``cd docs/figures && python start_page.py`` (CPU, about 20 s). The code below
is the start page's example, word for word.
"""

import jax
import matplotlib.pyplot as plt
import numpy as np

import jaxsde

model = jaxsde.pretrained("digits")  # the embedded 8x8 digits U-Net: no download
solver = jaxsde.GottaGoFast(rtol=0.05)  # adaptive step sizes, per sample
sol = jaxsde.sample(jax.random.PRNGKey(0), model.sde, model.score, solver, model.shape, n=64)
print("NFE per sample:", sol.stats.nfe.mean(), "failed:", int((sol.result != 0).sum()))

lo, hi = model.data_range
x = np.clip((np.asarray(sol.x[..., 0]) - lo) / (hi - lo), 0, 1)  # (64, 8, 8) in [0, 1]
grid = np.pad(x, ((0, 0), (1, 0), (1, 0)), constant_values=1)  # a white line between digits
grid = grid.reshape(8, 8, 9, 9).transpose(0, 2, 1, 3).reshape(72, 72)
plt.imsave("samples.png", np.kron(grid, np.ones((4, 4))), cmap="gray", vmin=0, vmax=1)
