"""MkDocs hook: publish ``benchmarks/results/*.md`` (and their plots) as pages of the site.

Every results file becomes the page ``benchmarks/results/<name>.md``; a ``<name>.png`` next to it,
or a ``.png`` its text names, is copied into the site beside the page (a plot the text does not
embed yet is embedded at the end). ``benchmarks/results/index.md`` lists the pages with the first
heading of each file. Nothing is copied into ``docs/`` and no figure is written here: every page
is the results file as the benchmark scripts wrote it, with two changes for reading: a value
with its uncertainty, ``27.2443 +- 4.6557``, is shown rounded to the uncertainty's two
significant digits, ``27.2 ± 4.7`` (outside code), and the pages rank below the guides and the
API reference in the site's search (mkdocs-material's ``search.boost``).
"""

from __future__ import annotations

import math
import re
from pathlib import Path

from mkdocs.structure.files import File, Files

RESULTS = Path(__file__).resolve().parent.parent / "benchmarks" / "results"
DEST = "benchmarks/results"
_IMAGE = re.compile(r"!\[[^\]]*\]\(([^)\s]+\.png)\)")
_PNG_NAME = re.compile(r"[\w.-]+\.png")
# plain decimals only: numbers in exponent notation (1.9e-04 +- 1.5e-04) are left as written
_PLUS_MINUS = re.compile(r"(?<![\w.-])(-?\d+(?:\.\d+)?) ?(?:\+-|±|\+/-) ?(\d+(?:\.\d+)?)(?![\w.]*\d|[eE])")
# Results pages rank below guides and API pages in search (1 is the default weight).
SEARCH_BOOST = 0.3
_FRONT_MATTER = f"---\nsearch:\n  boost: {SEARCH_BOOST}\n---\n\n"


def _decimals(number: str) -> int:
    return len(number.partition(".")[2])


def _round_pm(match: re.Match) -> str:
    """``value +- err`` -> ``value ± err``, err to 2 significant digits, value to the same place."""
    value, err = match.group(1), match.group(2)
    e = float(err)
    places = _decimals(err) if e == 0 else max(0, 1 - math.floor(math.log10(e)))
    pe, pv = min(places, _decimals(err)), min(places, _decimals(value))
    return f"{float(value):.{pv}f} ± {e:.{pe}f}"


def readable(text: str) -> str:
    """Round ``a +- b`` outside code spans and fenced blocks (see the module docstring)."""
    out, fenced = [], False
    for line in text.splitlines(keepends=True):
        if line.lstrip().startswith(("```", "~~~")):
            fenced = not fenced
        if fenced or "+-" not in line and "±" not in line and "+/-" not in line:
            out.append(line)
            continue
        parts = line.split("`")
        parts[::2] = [_PLUS_MINUS.sub(_round_pm, part) for part in parts[::2]]
        out.append("`".join(parts))
    return "".join(out)


def _title(text: str, fallback: str) -> str:
    for line in text.splitlines():
        if line.startswith("#"):
            return line.lstrip("#").strip()
    return fallback


def _pngs(md: Path, text: str) -> tuple[list[str], list[str]]:
    """(.png names the page needs, those of them the text does not embed yet)."""
    embedded = [Path(m).name for m in _IMAGE.findall(text)]
    named = embedded + _PNG_NAME.findall(text)
    if md.with_suffix(".png").exists():
        named.append(md.with_suffix(".png").name)
    wanted = [name for name in dict.fromkeys(named) if (RESULTS / name).exists()]
    return wanted, [name for name in wanted if name not in embedded]


def on_files(files: Files, config) -> Files:
    rows, copied = [], set()
    for md in sorted(RESULTS.glob("*.md")):
        text = md.read_text(encoding="utf-8")
        wanted, missing = _pngs(md, text)
        for name in missing:
            text = text.rstrip("\n") + f"\n\n![{name}]({name})\n"
        files.append(File.generated(config, f"{DEST}/{md.name}", content=_FRONT_MATTER + readable(text)))
        for name in wanted:
            if name not in copied:
                files.append(File.generated(config, f"{DEST}/{name}", abs_src_path=str(RESULTS / name)))
                copied.add(name)
        rows.append(f"| [{md.stem}]({md.name}) | {_title(text, md.stem).replace('|', '/')} |")
    index = [
        _FRONT_MATTER + "# Benchmark results",
        "",
        "Every file of `benchmarks/results/`, as the benchmark scripts wrote it (each names the",
        "command that reproduces it). The [overview](../../benchmarks.md) reads them.",
        "",
        "| file | first heading |",
        "|---|---|",
        *rows,
        "",
    ]
    files.append(File.generated(config, f"{DEST}/index.md", content="\n".join(index)))
    return files
