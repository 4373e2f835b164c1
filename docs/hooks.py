"""MkDocs hook: publish ``benchmarks/results/*.md`` (and their plots) as pages of the site.

Every results file becomes the page ``benchmarks/results/<name>.md``; a ``<name>.png`` next to it,
or a ``.png`` its text names, is copied into the site beside the page (a plot the text does not
embed yet is embedded at the end). ``benchmarks/results/index.md`` lists the pages with the first
heading of each file. Nothing is copied into ``docs/`` and no figure is written here: every page
is the results file as the benchmark scripts wrote it.
"""

from __future__ import annotations

import re
from pathlib import Path

from mkdocs.structure.files import File, Files

RESULTS = Path(__file__).resolve().parent.parent / "benchmarks" / "results"
DEST = "benchmarks/results"
_IMAGE = re.compile(r"!\[[^\]]*\]\(([^)\s]+\.png)\)")
_PNG_NAME = re.compile(r"[\w.-]+\.png")


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
        files.append(File.generated(config, f"{DEST}/{md.name}", content=text))
        for name in wanted:
            if name not in copied:
                files.append(File.generated(config, f"{DEST}/{name}", abs_src_path=str(RESULTS / name)))
                copied.add(name)
        rows.append(f"| [{md.stem}]({md.name}) | {_title(text, md.stem).replace('|', '/')} |")
    index = [
        "# Benchmark results",
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
