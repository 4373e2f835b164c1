"""``python -m benchmarks list | run NAME [options] | report [--out DIR]``."""

from __future__ import annotations

import argparse
import glob
import importlib
import json
import os
import pkgutil
import re
from types import ModuleType

from .. import suites
from .writer import RESULTS, Context, render


def names() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules(suites.__path__) if not m.name.startswith("_"))


def load(name: str) -> ModuleType:
    if name not in names():
        raise SystemExit(f"unknown suite {name!r}; `python -m benchmarks list` names them: {', '.join(names())}")
    return importlib.import_module(f"{suites.__name__}.{name}")


def summary(name: str) -> str:
    """A suite's one-line description, read without importing it (suites import heavy peers)."""
    import ast

    with open(os.path.join(suites.__path__[0], name + ".py")) as f:
        doc = ast.get_docstring(ast.parse(f.read())) or ""
    return doc.splitlines()[0] if doc else ""


HELP = dict(n="samples per row", batch="samples per compiled chunk", seed="the sampling seed",
            rounds="interleaved timing rounds (medians reported)", name="the results file's stem or suffix",
            model="an embedded model (jaxsde.pretrained)")


def options(parser: argparse.ArgumentParser, **defaults: object) -> None:
    """Add the options the suites share, each with its default here: ``n``, ``batch``, ``seed``, ``rounds``,
    ``name``, ``model`` (see :data:`HELP`), and ``quick`` (a smoke run; the value is its help text)."""
    for key, value in defaults.items():
        if key == "quick":
            parser.add_argument("--quick", action="store_true", help=str(value))
        else:
            parser.add_argument("--" + key, type=type(value), default=value, help=f"{HELP[key]} (default {value!r})")


def run(name: str, argv: list[str]) -> None:
    suite = load(name)
    parser = argparse.ArgumentParser(prog=f"python -m benchmarks run {name}", description=suite.__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=RESULTS, help="output folder (default benchmarks/results)")
    suite.arguments(parser)
    args = parser.parse_args(argv)
    ctx = Context(suite, name, list(argv), args.out)
    print(f"reproduce with: {ctx.command}", flush=True)
    suite.run(args, ctx)
    for stem in ctx.saved:
        print(f"wrote {ctx.path(stem, 'md')}", flush=True)


def report(out: str) -> int:
    """Re-render the ``.md`` / ``.png`` of every ``.json`` in ``out`` stored by a suite with ``render`` (named by its
    ``suite`` key, or by the ``python -m benchmarks run NAME`` of its stored command); a file the suite's ``render``
    cannot read (an older format) is named and left as it is."""
    done = 0
    for path in sorted(glob.glob(os.path.join(out, "*.json"))):
        with open(path) as f:
            data = json.load(f)
        if not isinstance(data, dict):
            continue
        stored = data.get("command") or (data.get("meta") or data.get("machine") or {}).get("command", "")
        found = re.search(r"python -m benchmarks run (\w+)", str(stored))
        name = data.get("suite") or (found and found.group(1))
        if name in names() and hasattr(suite := load(name), "render"):
            try:
                render(suite, data, path[:-len(".json")])
                done += 1
            except (KeyError, TypeError, ValueError, IndexError) as err:
                print(f"not re-rendered: {path} ({type(err).__name__}: {err})")
    print(f"re-rendered {done} results from {out}")
    return done


def main(argv: list[str]) -> int:
    if argv[:1] == ["run"] and len(argv) >= 2 and not argv[1].startswith("-"):
        run(argv[1], argv[2:])
        return 0
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="the suites")
    sub.add_parser("run", help="run NAME [options] (run NAME --help)").add_argument("name")
    sub.add_parser("report", help="re-render .md/.png from the stored .json").add_argument("--out", default=RESULTS)
    args = parser.parse_args(argv)
    if args.cmd == "list":
        for name in names():
            print(f"{name:24s} {summary(name)}")
    elif args.cmd == "run":
        run(args.name, [])
    else:
        report(args.out)
    return 0
