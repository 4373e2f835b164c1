"""Draw docs/figures/generation.png, the picture in the large-scale generation guide (docs/generation.md).

Run it in this folder: ``cd docs/figures && python generation.py`` (CPU, about a minute). 256
digits from ``jaxsde.generate`` with Gotta Go Fast (rtol 0.05) in 64 slots: left, the first 64
samples; right, each sample's NFE, and what ``sample`` in batches of 64 would pay per sample
(every sample of a batch waits for the batch's slowest one).
"""

import jax
import matplotlib.pyplot as plt
import numpy as np

import jaxsde

model = jaxsde.pretrained("digits")  # the embedded 8x8 digits U-Net: no download
n, slots = 256, 64
gen = jax.jit(lambda key: jaxsde.generate(key, model.sde, model.score, jaxsde.GottaGoFast(rtol=0.05), model.shape,
                                          n, slots))(jax.random.PRNGKey(0))
print(jaxsde.summarize(gen))

lo, hi = model.data_range
x = np.clip((np.asarray(gen.x[:64, ..., 0]) - lo) / (hi - lo), 0, 1)
grid = np.pad(x, ((0, 0), (1, 0), (1, 0)), constant_values=1).reshape(8, 8, 9, 9).transpose(0, 2, 1, 3)
nfe = np.asarray(gen.stats.nfe)
paid = np.repeat(nfe.reshape(-1, slots).max(axis=1), slots)  # sample(...) in batches of 64

fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.8), gridspec_kw={"width_ratios": [1, 1.4]})
left.imshow(grid.reshape(72, 72), cmap="gray", vmin=0, vmax=1)
left.set_title("generate: the first 64 of 256 samples", fontsize=9)
left.set_axis_off()
bins = np.linspace(nfe.min() - 1, paid.max() + 1, 30)
right.hist(nfe, bins=bins, alpha=0.8, label=f"NFE per sample (mean {nfe.mean():.0f})")
right.hist(paid, bins=bins, alpha=0.6, label=f"paid by sample in batches of 64 (mean {paid.mean():.0f})")
right.set_xlabel("score evaluations (NFE)")
right.set_ylabel("samples")
right.legend(fontsize=8)
fig.tight_layout()
fig.savefig("generation.png", dpi=100)
