"""Classifier-free guidance on the class-conditional digits model: label accuracy and FD-digits vs weight.

``jaxsde.pretrained("digits-cond")`` with ``classifier_free(ckpt.score, ckpt.null_cond, w)``; every row samples
``10 * per_class`` digits (sample i: label ``i mod 10``, key ``fold_in(PRNGKey(seed), i)``) through
``jaxsde.sample(..., cond=labels)``. Quality with the clean FD-digits classifier: label accuracy, FD-digits (with
bootstrap sd) and per-class FD-digits (floor: the ~36 held-out digits of the class). References: the unconditional
"digits" model and digits-cond's null class (EM). Solvers: EM, GGF, DPM-Solver++ 2M and the adaptive Adams
integrator (tau 1) over the weights; EM-1000 at ``--em1000-weight``.
"""

from __future__ import annotations

import numpy as np

import jaxsde
from jaxsde.data import load_digits
from jaxsde.testing.metrics.digits import DigitsMetrics

from ..harness.cli import options
from ..harness.machine import describe
from ..harness.samplers import sample_chunks
from ..harness.writer import columns, progress

SOLVERS = {
    "EM-200": lambda: jaxsde.EulerMaruyama(200),
    "GGF 0.05": lambda: jaxsde.GottaGoFast(rtol=0.05),
    "DPM++2M 20": lambda: jaxsde.DPMSolverPP(19),
    "AdaptiveMultistep-2 tau=1 0.3": lambda: jaxsde.AdaptiveMultistepSolver(order=2, tau=1.0, rtol=0.3,
                                                                            atol=0.0078 * 0.3 / 0.05),
}


class ClassQuality:
    """Label accuracy, overall and per-class FD-digits against the training digits."""

    def __init__(self):
        self.metrics = DigitsMetrics()
        self.train_labels = load_digits("train", (0.0, 1.0)).labels
        test = load_digits("test", (0.0, 1.0))
        self.class_floor = [self.metrics.frechet(self.metrics.features(test.images[test.labels == c], (0.0, 1.0)),
                                                 self._train(c)) for c in range(10)]

    def _train(self, c: int) -> np.ndarray:
        return self.metrics.train_features[self.train_labels == c]

    def __call__(self, x: np.ndarray, labels: np.ndarray | None, data_range) -> dict:
        feats = self.metrics.features(x, data_range)
        out = dict(fd=self.metrics.frechet(feats, self.metrics.train_features),
                   fd_std=self.metrics.fd_bootstrap_std(feats, 50))
        if labels is not None:
            predicted = np.argmax(self.metrics.probabilities(x, data_range), -1)
            per_class = [self.metrics.frechet(feats[labels == c], self._train(c)) for c in range(10)]
            out.update(accuracy=float(np.mean(predicted == labels)),
                       accuracy_per_class=[float(np.mean(predicted[labels == c] == c)) for c in range(10)],
                       fd_class=per_class, fd_class_mean=float(np.mean(per_class)),
                       fd_class_max=float(np.max(per_class)))
        return out


def arguments(parser):
    parser.add_argument("--per-class", type=int, default=100, help="samples per label (default 100)")
    parser.add_argument("--weights", default="0,0.5,1,2,4", help="guidance weights w")
    parser.add_argument("--solvers", default=",".join(SOLVERS), help=f"rows, from {list(SOLVERS)}")
    parser.add_argument("--em1000-weight", type=float, default=1.0, help="weight of the EM-1000 row")
    options(parser, batch=500, seed=0, quick="a smoke run: 8 per class, w in {0, 2}, EM-20")


def run(args, ctx):
    per_class = 8 if args.quick else args.per_class
    weights = [0.0, 2.0] if args.quick else [float(w) for w in args.weights.split(",")]
    names = [s.strip() for s in args.solvers.split(",")]
    unknown = [s for s in names if s not in SOLVERS]
    if unknown:
        ctx.error(f"unknown solvers {unknown}; choose from {list(SOLVERS)}")
    solvers = {"EM-20": lambda: jaxsde.EulerMaruyama(20)} if args.quick else {k: SOLVERS[k] for k in names}
    n = 10 * per_class
    batch = min(args.batch, n)
    labels = (np.arange(n) % 10).astype(np.int32)
    ckpt = jaxsde.pretrained("digits-cond")
    quality = ClassQuality()
    rows = []

    def record(kind, solver_name, w, x, nfe, fails, wall, compile_s, lab, data_range=ckpt.data_range):
        row = dict(kind=kind, solver=solver_name, weight=w, n=len(x), mean_nfe=float(nfe.mean()),
                   max_nfe=int(nfe.max()), failed=fails, wall_s=wall, compile_s=compile_s,
                   **quality(x, lab, data_range))
        rows.append(row)
        progress(row, "kind", "solver", "weight", "mean_nfe", "accuracy", "fd_class_mean", "fd_class_max", "fd",
                 "fd_std", "wall_s", "failed")

    em_ref = jaxsde.EulerMaruyama(20 if args.quick else 200)
    uncond = jaxsde.pretrained("digits")
    record("unconditional", f"digits EM-{em_ref.num_steps}", 0.0, *sample_chunks(
        uncond.sde, uncond.score_fn, uncond.params, uncond.shape, em_ref, n, args.seed, n), None, uncond.data_range)
    null = np.full(n, int(ckpt.null_cond), np.int32)
    record("null class", f"digits-cond EM-{em_ref.num_steps}", 0.0, *sample_chunks(
        ckpt.sde, ckpt.score_fn, ckpt.params, ckpt.shape, em_ref, n, args.seed, batch, null), None)
    plan = [(name, make, w) for name, make in solvers.items() for w in weights]
    plan += [] if args.quick else [("EM-1000", lambda: jaxsde.EulerMaruyama(1000), args.em1000_weight)]
    for solver_name, make, w in plan:
        def score_of(params, w=w):
            return jaxsde.guidance.classifier_free(ckpt.score_fn(params), ckpt.null_cond, w)

        record("guided", solver_name, w, *sample_chunks(ckpt.sde, score_of, ckpt.params, ckpt.shape, make(), n,
                                                        args.seed, batch, labels), labels)

    ctx.save("guidance" + ("_quick" if args.quick else ""),
             dict(per_class=per_class, seed=args.seed, rows=rows, class_floor=quality.class_floor,
                  class_floor_mean=float(np.mean(quality.class_floor))))


def render(data):
    rows, reference = data["rows"], data["rows"][0]
    lines = ["# Classifier-free guidance on digits-cond", "", f"Command: `{data['command']}`", "",
             f"{describe(data['machine'])}; {data['per_class']} samples per label (label i mod 10), seed "
             f"{data.get('seed', 0)}, the same keys in every row. Accuracy: classified as the requested label by the "
             "clean FD-digits classifier. FD: FD-digits +- bootstrap sd against the training set; FD/class: label c's "
             "samples against the training digits of class c (mean and max over the 10 classes; the held-out "
             f"digits' own per-class FD, about 36 per class, is {data['class_floor_mean']:.2f} on average).", "",
             f"Unconditional reference ({reference['solver']}): FD-digits {reference['fd']:.2f} +- "
             f"{reference['fd_std']:.2f}; 2x that is {2 * reference['fd']:.2f}.", "",
             *columns(rows, {"solver": "{solver} ({kind})", "w": "{weight:g}", "mean NFE": "{mean_nfe:.1f}",
                             "max NFE": "{max_nfe}", "accuracy": lambda r: f"{100 * r['accuracy']:.1f}%",
                             "FD/class mean": "{fd_class_mean:.2f}", "FD/class max": "{fd_class_max:.2f}",
                             "FD": "{fd:.2f} +- {fd_std:.2f}", "wall s": "{wall_s:.1f}", "failed": "{failed}"},
                     missing="-")]
    return "\n".join(lines)


def plot(data, path):
    import matplotlib.pyplot as plt

    rows = data["rows"]
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for solver_name in sorted({r["solver"] for r in rows if r["kind"] == "guided"}):  # a fixed order: same png
        pts = sorted((r["weight"], r["fd"], r["accuracy"]) for r in rows
                     if r["kind"] == "guided" and r["solver"] == solver_name)
        ax.plot([p[1] for p in pts], [100 * p[2] for p in pts], marker="o", label=solver_name)
        for w, fd, acc in pts:
            ax.annotate(f"w={w:g}", (fd, 100 * acc), fontsize=7, textcoords="offset points", xytext=(3, 3))
    ax.axvline(rows[0]["fd"], ls="--", c="gray", label="unconditional model, EM")
    ax.set_xlabel("FD-digits (all samples vs the training set; lower is better)")
    ax.set_ylabel("label accuracy, %")
    ax.set_title(f"digits-cond, classifier-free guidance, {data['per_class']} per label")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
