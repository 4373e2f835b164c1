"""Console script ``jaxsde``."""

from __future__ import annotations

import argparse
import sys


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(out=args.out, n=args.n, dim=args.dim, seed=args.seed, rtol=args.rtol, em_steps=args.em_steps)
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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ValueError as err:  # bad input: a clear message, no traceback
        print(f"jaxsde {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
