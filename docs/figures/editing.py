"""Draw docs/figures/editing.png, the picture in the editing guide (docs/editing.md).

Run it in this folder: ``cd docs/figures && python editing.py`` (CPU, under a minute). Top row:
a test-split digit, the known pixels (left half) and four inpaintings by Gotta Go Fast. Bottom
row: the digit with a blob drawn on it (the guide) and its SDEdit by DDIM(50) from t0 = 0.3,
0.5 and 0.8 (two samples each): the larger t0, the further from the guide.
"""

import jax
import matplotlib.pyplot as plt
import numpy as np

import jaxsde
from jaxsde.data import load_digits

model = jaxsde.pretrained("digits")  # the embedded 8x8 digits U-Net: no download
digit = jax.numpy.asarray(load_digits("test", model.data_range).images[3])  # (8, 8, 1)
mask = np.zeros((8, 8), np.float32)
mask[:, :4] = 1.0  # 1 = known: the left half
inpainted = jaxsde.inpaint(jax.random.PRNGKey(0), model.sde, model.score, jaxsde.GottaGoFast(rtol=0.05),
                           digit, mask, n=4)
guide = digit.at[1:3, 5:7, 0].set(model.data_range[1])  # a blob at the top right
edits = [jaxsde.sdedit(jax.random.PRNGKey(1), model.sde, model.score, jaxsde.DDIM(50), guide, t0, n=2)
         for t0 in (0.1, 0.3, 0.6)]

lo, hi = model.data_range
known = np.where(mask[..., None] == 1, np.asarray(digit), lo)  # the unknown half drawn blank
rows = [
    [(digit, "original"), (known, "known pixels")] + [(x, f"inpainted #{i}") for i, x in enumerate(inpainted.x)],
    [(guide, "guide (edited)")] + [(x, f"SDEdit t0={t0}") for t0, sol in zip((0.1, 0.3, 0.6), edits, strict=True)
                                   for x in sol.x],
]
fig, axes = plt.subplots(2, 7, figsize=(9.8, 3.2))
for ax_row, row in zip(axes, rows, strict=True):
    for ax in ax_row:
        ax.set_axis_off()
        ax.set_aspect("equal")
    for ax, (x, title) in zip(ax_row, row, strict=False):
        ax.imshow(np.clip((np.asarray(x)[..., 0] - lo) / (hi - lo), 0, 1), cmap="gray_r", vmin=0, vmax=1)
        ax.set_title(title, fontsize=8)
        ax.set_axis_on()  # a thin frame: white pixels stay visible
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_color("0.8")
fig.tight_layout()
fig.savefig("editing.png", dpi=100)
print("inpainting: known pixels kept exactly:",
      bool(np.all(np.asarray(inpainted.x)[:, mask == 1] == np.asarray(digit)[mask == 1])),
      "NFE per sample:", np.asarray(inpainted.stats.nfe))
