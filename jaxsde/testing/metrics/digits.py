"""Image-quality metrics for 8x8 digits, in the feature space of a small shipped classifier.

Like FID, but with a digits classifier (an MLP trained on the training split of
scikit-learn's digits; weights in ``jaxsde/checkpoints/weights/digits-classifier.msgpack``, command in
``jaxsde/checkpoints/weights/README.md``) in place of Inception:

* ``fd``: Frechet distance between Gaussian fits of penultimate-layer features of the
  samples and of the 1438 training images ("FD-digits"). Lower is better. Biased upwards at
  small n (like FID): compare methods at the same n, and read it next to ``fd_floor``, the
  FD of n held-out real images (359 at most) against the training set.
* ``kid``: unbiased MMD^2 with the cubic polynomial kernel ``(a.b / d + 1)^3`` on the same
  features (KID); unbiased, so usable at small n, and ``kid_floor`` likewise.
* ``class_tv``: total variation between the predicted-class histogram and uniform.
* ``confident``: fraction of samples classified with probability >= 0.9.

All functions take images in the model's data range with shape ``(n, 8, 8, 1)``.
"""

from __future__ import annotations

import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from ...checkpoints.embedded import WEIGHTS_DIR
from ...checkpoints.io import load_msgpack, save_msgpack
from ...data import load_digits, to_unit_range
from .samples import gaussian_w2

CLASSIFIER_PATH = os.path.join(WEIGHTS_DIR, "digits-classifier.msgpack")


class DigitsClassifier(nn.Module):
    """MLP 64 -> 256 -> 128 (features) -> 10 on images in [0, 1]."""

    @nn.compact
    def __call__(self, x, features: bool = False):
        h = x.reshape((x.shape[0], -1)) * 2.0 - 1.0
        h = nn.gelu(nn.Dense(256)(h))
        feats = nn.gelu(nn.Dense(128)(h))
        if features:
            return feats
        return nn.Dense(10)(feats)


def train_classifier(steps: int = 3000, seed: int = 0, path: str | None = CLASSIFIER_PATH, verbose: bool = True):
    """Train the classifier on the training split (noise augmentation for robustness to
    sampler artefacts) and save it; returns (params, held-out accuracy)."""
    train, test = load_digits("train", (0.0, 1.0)), load_digits("test", (0.0, 1.0))
    model = DigitsClassifier()
    key = jax.random.PRNGKey(seed)
    params = model.init(key, jnp.zeros((1, 8, 8, 1)))
    tx = optax.adamw(optax.cosine_decay_schedule(2e-3, steps), weight_decay=1e-4)
    opt = tx.init(params)
    x_all, y_all = jnp.asarray(train.images), jnp.asarray(train.labels)

    @jax.jit
    def step(params, opt, key):
        k1, k2 = jax.random.split(key)
        idx = jax.random.randint(k1, (128,), 0, x_all.shape[0])
        x = x_all[idx] + 0.05 * jax.random.normal(k2, (128, 8, 8, 1))

        def loss(p):
            logits = model.apply(p, x)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y_all[idx]).mean()

        grads = jax.grad(loss)(params)
        updates, opt = tx.update(grads, opt, params)
        return optax.apply_updates(params, updates), opt

    for _ in range(steps):
        key, sub = jax.random.split(key)
        params, opt = step(params, opt, sub)
    acc = float(jnp.mean(jnp.argmax(model.apply(params, jnp.asarray(test.images)), -1) == test.labels))
    if verbose:
        print(f"digits classifier: held-out accuracy {acc:.4f}")
    if path:
        save_msgpack(path, {"params": params})
    return params, acc


def load_classifier(path: str = CLASSIFIER_PATH):
    params = load_msgpack(path)["params"]
    return jax.tree_util.tree_map(jnp.asarray, params)


class DigitsMetrics:
    """Holds the classifier and the training-set feature statistics."""

    def __init__(self, params=None):
        self.model = DigitsClassifier()
        self.params = load_classifier() if params is None else params
        self._features = jax.jit(lambda p, x: self.model.apply(p, x, features=True))
        self._logits = jax.jit(self.model.apply)
        self.train_features = self.features(load_digits("train", (0.0, 1.0)).images, (0.0, 1.0))
        self.test_images = load_digits("test", (0.0, 1.0)).images

    def features(self, x, data_range=(-1.0, 1.0)) -> np.ndarray:
        return np.asarray(self._features(self.params, jnp.asarray(to_unit_range(x, data_range))), np.float64)

    def probabilities(self, x, data_range=(-1.0, 1.0)) -> np.ndarray:
        logits = self._logits(self.params, jnp.asarray(to_unit_range(x, data_range)))
        return np.asarray(jax.nn.softmax(logits, -1), np.float64)

    def accuracy(self, x, labels, data_range=(0.0, 1.0)) -> float:
        return float(np.mean(np.argmax(self.probabilities(x, data_range), -1) == np.asarray(labels)))

    @staticmethod
    def frechet(a: np.ndarray, b: np.ndarray) -> float:
        return gaussian_w2(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False)) ** 2

    @staticmethod
    def kid(a: np.ndarray, b: np.ndarray) -> float:
        d = a.shape[1]
        kaa, kbb, kab = ((a @ a.T) / d + 1) ** 3, ((b @ b.T) / d + 1) ** 3, ((a @ b.T) / d + 1) ** 3
        n, m = len(a), len(b)
        return float((kaa.sum() - np.trace(kaa)) / (n * (n - 1)) + (kbb.sum() - np.trace(kbb)) / (m * (m - 1))
                     - 2 * kab.mean())

    def fd_bootstrap_std(self, feats: np.ndarray, repeats: int = 50, seed: int = 0) -> float:
        """Standard deviation of FD-digits over bootstrap resamples of the generated features:
        the metric's sampling noise at this n (the reference statistics are held fixed)."""
        rng = np.random.default_rng(seed)
        n = len(feats)
        fds = [self.frechet(feats[rng.integers(0, n, n)], self.train_features) for _ in range(repeats)]
        return float(np.std(fds, ddof=1))

    def report(self, x, data_range=(-1.0, 1.0), bootstrap: int = 0) -> dict[str, float]:
        """FD-digits, KID, class-histogram TV, confident fraction, and the real-vs-real floors
        (n held-out real images against the training set, n capped at the 359 held out).
        ``bootstrap > 0`` adds ``fd_std``, the bootstrap standard deviation of FD at this n."""
        x = np.asarray(x)
        feats = self.features(x, data_range)
        extra = {"fd_std": self.fd_bootstrap_std(feats, bootstrap)} if bootstrap > 0 else {}
        probs = self.probabilities(x, data_range)
        hist = np.bincount(np.argmax(probs, -1), minlength=10) / len(x)
        n_floor = min(len(x), len(self.test_images))
        real = self.features(self.test_images[:n_floor], (0.0, 1.0))
        return dict(
            fd=self.frechet(feats, self.train_features),
            kid=self.kid(feats, self.train_features),
            class_tv=float(0.5 * np.abs(hist - 0.1).sum()),
            confident=float(np.mean(probs.max(-1) >= 0.9)),
            fd_floor=self.frechet(real, self.train_features),
            kid_floor=self.kid(real, self.train_features),
            n=len(x),
            n_floor=n_floor,
            **extra,
        )
