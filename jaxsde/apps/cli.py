"""Console script ``jaxsde``."""

from __future__ import annotations

import argparse
import sys


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(out=args.out, n=args.n, dim=args.dim, seed=args.seed, rtol=args.rtol, em_steps=args.em_steps)
    return 0


def _sample(args: argparse.Namespace) -> int:
    from .sampling_job import print_report, run_sample

    report = run_sample(model=args.model, solver=args.solver, n=args.n, seed=args.seed, out=args.out,
                        batch_size=args.batch_size, metrics=not args.no_metrics, progress=not args.no_progress,
                        label=args.label, guidance_weight=args.guidance, samples=args.samples,
                        rtol=args.rtol, atol=args.atol, steps=args.steps, snr=args.snr, eta=args.eta)
    print_report(report, args.out)
    if args.samples:
        print(f"wrote {args.samples}")
    return 0


def _generate(args: argparse.Namespace) -> int:
    from .generate_job import print_report, run_generate

    report = run_generate(model=args.model, solver=args.solver, n=args.n, seed=args.seed, out=args.out,
                          batch_size=args.batch_size, chunk_size=args.chunk_size, progress=not args.no_progress,
                          rtol=args.rtol, atol=args.atol, steps=args.steps, snr=args.snr, eta=args.eta)
    print_report(report)
    return 0


def _likelihood(args: argparse.Namespace) -> int:
    import json

    from .likelihood_job import print_report, run_likelihood

    report = run_likelihood(model=args.model, n=args.n, seed=args.seed, split=args.split, divergence=args.divergence,
                            num_probes=args.probes, rtol=args.rtol, atol=args.atol, batch_size=args.batch_size,
                            out=args.out)
    print_report(report, args.out)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    return 0


def _train(args: argparse.Namespace) -> int:
    from ..training import TrainConfig, train

    # a flow-matching SDE trains the velocity (flow matching) unless told otherwise
    parameterization = args.parameterization or ("flow" if args.sde == "flow" else "eps")
    config = TrainConfig(data=args.data, size=args.size, sde=args.sde, parameterization=parameterization,
                         weighting=args.weighting, time_sampling=args.time_sampling, steps=args.steps,
                         batch_size=args.batch_size, learning_rate=args.lr, seed=args.seed,
                         num_classes=args.num_classes, label_dropout=args.label_dropout)
    config.validate()
    train(config, args.out)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jaxsde", description="Fast sampling from score-based diffusion models.")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="GGF vs Euler-Maruyama on a built-in Gaussian mixture (exact score)")
    demo.add_argument("--n", type=int, default=1000, help="number of samples (default 1000)")
    demo.add_argument("--dim", type=int, default=64, help="dimension of the mixture (default 64)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--rtol", type=float, default=0.05, help="GGF relative tolerance (default 0.05)")
    demo.add_argument("--em-steps", type=int, default=1000, help="Euler-Maruyama steps (default 1000)")
    demo.add_argument("--out", default="demo.png", help="scatter plot PNG (default demo.png)")
    demo.set_defaults(func=_demo)

    from ..solvers.registry import describe_solvers

    sp = sub.add_parser("sample", help="generate images from an embedded model; write a grid; report NFE and FD")
    sp.add_argument("--model", default="digits",
                    help="digits | digits-medium | digits-small | digits-ve | digits-cond (class-conditional) | "
                         "digits-flow (flow matching: fixed-grid solvers run on a uniform grid from t = 1)")
    sp.add_argument("--solver", default="ggf", help=describe_solvers())
    sp.add_argument("--rtol", type=float, default=None, help="relative tolerance (adaptive solvers)")
    sp.add_argument("--atol", type=float, default=None, help="absolute tolerance (adaptive solvers)")
    sp.add_argument("--steps", type=int, default=None, help="number of steps (fixed-step solvers)")
    sp.add_argument("--snr", type=float, default=None, help="Langevin snr (pc)")
    sp.add_argument("--eta", type=float, default=None,
                    help="noise of the adaptive exponential integrators (dpm-adaptive: ancestral eta; "
                         "multistep-adaptive: tau); 0 = the probability-flow ODE")
    sp.add_argument("--n", type=int, default=64, help="number of samples")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--batch-size", type=int, default=256)
    sp.add_argument("--out", default="grid.png", help="image grid PNG")
    sp.add_argument("--samples", default=None,
                    help="also write the samples to this .npz: x (n, 8, 8, 1) in the data range, nfe, result, "
                         "data_range (and label for a conditional model)")
    sp.add_argument("--label", default=None,
                    help="class-conditional models (digits-cond): a class 0-9 for every sample, or 'all' (default: "
                         "grid row r gets class r mod 10)")
    sp.add_argument("--guidance", type=float, default=None,
                    help="classifier-free guidance weight w: (1 + w) s(x, t, c) - w s(x, t, null) (default 0)")
    sp.add_argument("--no-metrics", action="store_true", help="skip FD-digits")
    sp.add_argument("--no-progress", action="store_true", help="no progress bar")
    sp.set_defaults(func=_sample)

    gen = sub.add_parser("generate", help="many samples into resumable shard files DIR/shard-*.npz (continuous "
                         "batching; rerun with the same arguments to resume)")
    gen.add_argument("--model", default="digits",
                     help="digits | digits-medium | digits-small | digits-ve | digits-flow")
    gen.add_argument("--solver", default="ggf", help=describe_solvers())
    gen.add_argument("--rtol", type=float, default=None, help="relative tolerance (adaptive solvers)")
    gen.add_argument("--atol", type=float, default=None, help="absolute tolerance (adaptive solvers)")
    gen.add_argument("--steps", type=int, default=None, help="number of steps (fixed-step solvers)")
    gen.add_argument("--snr", type=float, default=None, help="Langevin snr (pc)")
    gen.add_argument("--eta", type=float, default=None,
                    help="noise of the adaptive exponential integrators (dpm-adaptive: ancestral eta; "
                         "multistep-adaptive: tau); 0 = the probability-flow ODE")
    gen.add_argument("--n", type=int, default=1000, help="number of samples (indices 0..n-1)")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--batch-size", type=int, default=256, help="slots of the continuous batch")
    gen.add_argument("--chunk-size", type=int, default=1024, help="samples per shard file")
    gen.add_argument("--out", required=True, help="output directory (rerun with the same arguments to resume)")
    gen.add_argument("--no-progress", action="store_true", help="no progress bar")
    gen.set_defaults(func=_generate)

    ll = sub.add_parser("likelihood", help="bits/dim of held-out digits under an embedded model (probability-flow "
                        "ODE), with its standard error and a histogram")
    ll.add_argument("--model", default="digits",
                    help="digits | digits-medium | digits-small | digits-ve | digits-flow")
    ll.add_argument("--n", type=int, default=128, help="number of digits (the held-out split has 359)")
    ll.add_argument("--split", default="test", help="test (held out, default) | train | all")
    ll.add_argument("--seed", type=int, default=0, help="seed of the dequantization noise and the probes")
    ll.add_argument("--divergence", default="hutchinson",
                    help="hutchinson (default: unbiased, its noise is in the standard error) | exact (64 Jacobian-"
                         "vector products per evaluation on 8x8 digits: ~10x slower) | auto")
    ll.add_argument("--probes", type=int, default=4, help="Hutchinson probes per sample (default 4)")
    ll.add_argument("--rtol", type=float, default=1e-4, help="default 1e-4 (moves bits/dim by < 1e-3 against 1e-5)")
    ll.add_argument("--atol", type=float, default=1e-4)
    ll.add_argument("--batch-size", type=int, default=128)
    ll.add_argument("--out", default=None, help="histogram PNG")
    ll.add_argument("--json", default=None, help="write the report (per-sample bits/dim included) here")
    ll.set_defaults(func=_likelihood)

    tr = sub.add_parser("train", help="train a score network by denoising score matching, or a velocity network by "
                        "flow matching (--sde flow) (resumable)")
    tr.add_argument("--data", default="digits", help="training data (available: digits)")
    tr.add_argument("--size", default="medium", help="small | medium | large")
    tr.add_argument("--sde", default="vp", help="vp | subvp | ve | flow (the linear path of flow matching)")
    tr.add_argument("--parameterization", default=None,
                    help="eps | x0 | v | score | flow (the velocity, trained by flow matching); default: flow for "
                         "--sde flow, eps otherwise")
    tr.add_argument("--time-sampling", default="uniform",
                    help="training times of flow matching: uniform | logit_normal (SD3's logit-normal(0, 1)); "
                         "the score losses take uniform times")
    tr.add_argument("--weighting", default="simple", help="simple | likelihood")
    tr.add_argument("--steps", type=int, default=4000)
    tr.add_argument("--batch-size", type=int, default=128)
    tr.add_argument("--lr", type=float, default=2e-3)
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--num-classes", type=int, default=None,
                    help="class-conditional training on the data's labels (digits: 10); label num-classes = no label")
    tr.add_argument("--label-dropout", type=float, default=0.1,
                    help="probability of replacing a label by the null class (classifier-free guidance; default 0.1)")
    tr.add_argument("--out", required=True, help="run directory (rerun with the same arguments to resume)")
    tr.set_defaults(func=_train)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, OSError) as err:  # bad input, missing files, full disk: a clear message, no traceback
        print(f"jaxsde {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
