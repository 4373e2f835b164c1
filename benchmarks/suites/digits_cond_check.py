"""Quick quality check of the class-conditional "digits-cond" model, unguided, and of the noisy classifier.

Per label c: ``--n`` samples with ``EulerMaruyama(--steps)`` at the fixed label (key ``PRNGKey(c)``), accuracy under
the clean FD-digits classifier and per-class FD-digits (floor: the held-out digits of class c); pooled FD-digits;
references with the same solver: the null class and "digits-medium" (keys ``PRNGKey(100 + k)``). Then the noisy
classifier's held-out accuracy at a few ``t``, next to the training set's exact posterior. Writes
``digits_cond_check.{json,md}``.
"""

from __future__ import annotations

import datetime
import time

import jax
import jax.numpy as jnp
import numpy as np

import jaxsde
from jaxsde.checkpoints.embedded import noisy_classifier
from jaxsde.data import load_digits
from jaxsde.testing.metrics.digits import DigitsMetrics
from jaxsde.training import NOISY_CLASSIFIER_EVAL_TIMES, noisy_classifier_accuracy

from ..harness.writer import table


def sampler(ckpt, solver, n: int, conditional: bool):
    """A compiled ``(params, label, seed) -> (n, 8, 8, 1)`` (``label`` ignored if unconditional)."""

    @jax.jit
    def run(params, label, seed):
        score = (lambda x, t: ckpt.score_fn(params)(x, t, label)) if conditional else ckpt.score_fn(params)
        sol = jaxsde.sample(jax.random.PRNGKey(seed), ckpt.sde, score, solver, ckpt.shape, n)
        return sol.x, sol.result

    def call(label: int, seed: int):
        x, result = run(ckpt.params, jnp.int32(label), jnp.int32(seed))
        return np.asarray(x), int(np.sum(np.asarray(result) != 0))

    return call


def posterior_accuracy(sde, t: float, draws: int = 4, seed: int = 0) -> float:
    """Accuracy on the held-out digits noised to ``t`` of the exact class posterior of the
    training set's empirical distribution (``p(c | x_t)`` proportional to the sum over training
    digits of class ``c`` of ``N(x_t; alpha x0, sigma^2 I)``): a reference for the noisy classifier."""
    train, test = load_digits("train", sde.data_range), load_digits("test", sde.data_range)
    x0, y0 = train.images.reshape(len(train.labels), -1).astype(np.float64), train.labels
    alpha, sigma = (float(v) for v in sde.marginal(t))
    rng, correct = np.random.default_rng(seed), []
    for _ in range(draws):
        xt = alpha * test.images.reshape(len(test.labels), -1) + sigma * rng.standard_normal((len(test.labels), 64))
        logw = -((xt[:, None, :] - alpha * x0[None]) ** 2).sum(-1) / (2 * sigma**2)
        w = np.exp(logw - logw.max(1, keepdims=True))
        post = np.stack([w[:, y0 == c].sum(1) for c in range(10)], 1)
        correct.append(post.argmax(1) == test.labels)
    return float(np.mean(correct))


def arguments(parser):
    parser.add_argument("--n", type=int, default=200, help="samples per label")
    parser.add_argument("--steps", type=int, default=200, help="Euler-Maruyama steps")


def run(args, ctx):
    ckpt, solver, metrics = jaxsde.pretrained("digits-cond"), jaxsde.EulerMaruyama(args.steps), DigitsMetrics()
    train_labels, test = load_digits("train").labels, load_digits("test", (0.0, 1.0))
    t0 = time.perf_counter()
    cond = sampler(ckpt, solver, args.n, conditional=True)
    rows, xs, fails = [], [], 0
    for c in range(10):
        x, f = cond(c, c)  # PRNGKey(c): label c's samples
        fails += f
        xs.append(x)
        feats = metrics.features(x, ckpt.data_range)
        acc = float(np.mean(np.argmax(metrics.probabilities(x, ckpt.data_range), -1) == c))
        ref = metrics.train_features[train_labels == c]
        floor = metrics.frechet(metrics.features(test.images[test.labels == c], (0.0, 1.0)), ref)
        rows.append(dict(label=c, accuracy=acc, fd_class=metrics.frechet(feats, ref), fd_class_floor=floor,
                         n_floor=int(np.sum(test.labels == c))))
        print(f"label {c}: accuracy {acc:.3f}  per-class FD {rows[-1]['fd_class']:.2f} (floor {floor:.2f})",
              flush=True)
    medium = jaxsde.pretrained("digits-medium")
    unc = sampler(medium, solver, args.n, conditional=False)
    reports = dict(pooled=metrics.report(np.concatenate(xs), ckpt.data_range),
                   null_class=metrics.report(np.concatenate([cond(int(ckpt.null_cond), 100 + k)[0]
                                                             for k in range(10)]), ckpt.data_range),
                   digits_medium=metrics.report(np.concatenate([unc(0, 100 + k)[0] for k in range(10)]),
                                                medium.data_range))
    wall, clf = time.perf_counter() - t0, noisy_classifier()
    ctx.save("digits_cond_check", dict(
        date=datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"), device=str(jax.devices()[0]),
        solver=f"EulerMaruyama({args.steps})", n_per_label=args.n, failures=fails, per_label=rows,
        mean_accuracy=float(np.mean([r["accuracy"] for r in rows])), **reports,
        noisy_classifier_accuracy={str(t): noisy_classifier_accuracy(clf, t) for t in NOISY_CLASSIFIER_EVAL_TIMES},
        empirical_posterior_accuracy={str(t): posterior_accuracy(clf.sde, t) for t in NOISY_CLASSIFIER_EVAL_TIMES},
        sampling_wall_s=wall, train_config=ckpt.config))


def render(result: dict) -> str:
    rows, pooled, cfg, n = result["per_label"], result["pooled"], result["train_config"], result["n_per_label"]
    clf_acc, bayes_acc = result["noisy_classifier_accuracy"], result["empirical_posterior_accuracy"]
    reports = {"digits-cond, labels 0..9 pooled": pooled, "digits-cond, null class (unconditional)":
               result["null_class"], "digits-medium (unconditional model)": result["digits_medium"]}
    lines = [
        "# digits-cond: unguided quality check", "",
        f"`{result['command']}` ({result['date']}, {result['device']}, sampling {result['sampling_wall_s']:.0f} "
        "s).", "",
        f"Model `jaxsde.pretrained(\"digits-cond\")` (DigitsUNet medium, {cfg['steps']} steps, label dropout "
        f"{cfg['label_dropout']}), no guidance: the conditional score at a fixed label, "
        f"`{result['solver']}`, {n} samples per label ({result['failures']} failed). Accuracy: the fraction the "
        "shipped clean FD-digits classifier assigns to the requested label. Per-class FD: the samples of a label "
        "against the training digits of that class (the floor: that class's held-out digits, n as listed, "
        "biased up by their small n).", "",
        *table(["label", "accuracy", "per-class FD", "floor (n)"],
               [[r["label"], f"{r['accuracy']:.3f}", f"{r['fd_class']:.2f}",
                 f"{r['fd_class_floor']:.2f} ({r['n_floor']})"] for r in rows]),
        f"| mean | {result['mean_accuracy']:.3f} | {np.mean([r['fd_class'] for r in rows]):.2f} | |", "",
        f"Overall FD-digits (n = {10 * n} against the 1438 training digits; real-vs-real floor at n = "
        f"{pooled['n_floor']}: {pooled['fd_floor']:.2f}):", "",
        *table(["samples", "FD-digits", "KID", "class TV", "confident"],
               [[name, f"{r['fd']:.2f}", f"{r['kid']:.4f}", f"{r['class_tv']:.3f}", f"{r['confident']:.3f}"]
                for name, r in reports.items()]),
        "", "Noisy classifier (`jaxsde.checkpoints.embedded.noisy_classifier()`), held-out accuracy on the "
        "359 test digits noised to time t (4 noise draws each):", "",
        *table(["t", *clf_acc], [["noisy classifier", *(f"{a:.3f}" for a in clf_acc.values())],
                                 ["exact posterior of the training set (reference)",
                                  *(f"{a:.3f}" for a in bayes_acc.values())]]), "",
        "The reference classifies by `p(c | x_t)` under the empirical distribution of the 1438 training "
        "digits (4 other noise draws): the accuracy the training set itself supports at each t, the noise "
        "erasing the class as t grows.", ""]
    return "\n".join(lines)
