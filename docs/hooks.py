"""MkDocs hook: publish ``benchmarks/results/*.md`` (and their plots) as pages of the site.

Every results file becomes the page ``benchmarks/results/<name>.md``; a ``<name>.png`` next to it,
or a ``.png`` its text names, is copied into the site beside the page (a plot the text does not
embed yet is embedded at the end). ``benchmarks/results/index.md`` lists the pages with the first
heading of each file. Nothing is copied into ``docs/`` and no figure is written here: every page
is the results file as the benchmark scripts wrote it, with two changes for reading: a value
with its uncertainty, ``27.2443 +- 4.6557``, is shown rounded to the uncertainty's two
significant digits, ``27.2 ± 4.7`` (outside code), and the pages rank below the guides and the
API reference in the site's search (mkdocs-material's ``search.boost``).

It also opens each API page with a summary table (``on_page_markdown``) and keeps the notebook pages
(``docs/examples/``, rendered by mkdocs-jupyter) offline: no MathJax from a CDN (``on_page_content``).
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mkdocs.structure.files import Files

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
    from mkdocs.structure.files import File  # here: tests import this module's parser without mkdocs

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


# --- API pages: a summary table at the top -----------------------------------------------------
# Each page of docs/api/ documents objects one ``::: path`` directive at a time, so mkdocstrings'
# own summaries (members of a module or class) do not list them: this table does, one row per
# documented object, linked to its entry, with the first sentence of its docstring.

_DIRECTIVE = re.compile(r"^::: *([\w.]+) *$")
_MEMBERS = re.compile(r"^\s+members:\s*(.*)$")
_ROLE = re.compile(r":(?:py:)?(?:func|class|meth|mod|attr|data|obj|exc|const):`~?([^`]+)`")


def api_directives(markdown: str) -> list[tuple[str, bool | list[str] | None]]:
    """``(path, members)`` for each mkdocstrings directive ``::: path`` of a page, in page order.

    ``members`` is the directive's ``members:`` option: None when absent (a module directive documents
    the module's public members), False for ``members: false``, else the listed names (a list may run
    over several lines). tests/test_docs_reference.py checks the reference with this same parser.
    """
    found, lines = [], markdown.splitlines()
    for i, line in enumerate(lines):
        m = _DIRECTIVE.match(line)
        if not m:
            continue
        members = None
        j = i + 1
        while j < len(lines) and lines[j].startswith((" ", "\t")) and lines[j].strip():
            mm = _MEMBERS.match(lines[j])
            if mm:
                text = mm.group(1).strip()
                while not text.endswith("]") and text.startswith("[") and j + 1 < len(lines):
                    j += 1
                    text += " " + lines[j].strip()
                members = False if text == "false" else [n.strip() for n in text.strip("[]").split(",") if n.strip()]
            j += 1
        found.append((m.group(1), members))
    return found


def resolve(path: str):
    """The object a dotted ``path`` names: the longest importable module prefix, then attributes."""
    import importlib

    parts = path.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(path)


def _first_sentence(obj) -> str:
    import inspect

    if not (inspect.isclass(obj) or inspect.isroutine(obj) or inspect.ismodule(obj)):
        # a value's getdoc is its type's docstring
        return "a type alias" if type(obj).__module__ in ("typing", "collections.abc") else "a constant"
    doc = inspect.getdoc(obj) or ""
    para = " ".join(doc.split("\n\n", 1)[0].split())
    para = _ROLE.sub(lambda m: f"``{m.group(1).rsplit('.', 1)[-1]}``", para)
    end = re.search(r"\.(\s|$)", para)
    text = (para[: end.start() + 1] if end else para).replace("``", "`")
    if len(text) > 160:
        cut = text[:160].rsplit(" ", 1)[0]
        text = cut + " ..." if cut.count("`") % 2 == 0 else cut.rsplit("`", 1)[0] + "..."
    return text.replace("|", "\\|")


def _summary_rows(markdown: str) -> list[str]:
    import types

    rows = []
    for path, members in api_directives(markdown):
        try:
            obj = resolve(path)
        except (ImportError, AttributeError):
            continue
        if isinstance(obj, types.ModuleType):
            for name in members if isinstance(members, list) else []:  # the listed members, each its own entry
                rows.append(f"| [`{name}`](#{path}.{name}) | {_first_sentence(getattr(obj, name))} |")
            continue  # a module's own docstring is the page's prose
        rows.append(f"| [`{path.rsplit('.', 1)[-1]}`](#{path}) | {_first_sentence(obj)} |")
    return rows


def on_page_markdown(markdown: str, page, config, files) -> str:
    if not page.file.src_uri.startswith("api/"):
        return markdown
    rows = _summary_rows(markdown)
    if len(rows) < 2:
        return markdown
    table = "\n".join(["| name | what it is |", "|---|---|", *rows])
    lines = markdown.splitlines()
    # after the title and the page's first paragraph, if any
    at = next((k for k, line in enumerate(lines) if line.startswith("# ")), -1) + 1
    while at < len(lines) and not lines[at].strip():
        at += 1
    while at < len(lines) and lines[at].strip() and not lines[at].startswith(":::"):
        at += 1
    return "\n".join([*lines[:at], "", table, "", *lines[at:]])


# nbconvert's HTML for a notebook (mkdocs-jupyter) loads MathJax from a CDN: the site stays offline,
# the vendored KaTeX renders the notebooks' maths instead (docs/javascripts/katex.js)
_MATHJAX = re.compile(r"<!-- Load mathjax -->.*?<!-- End of mathjax configuration -->", re.S)
_REMOTE_SCRIPT = re.compile(r"<script[^>]*\bsrc=\"https?://[^\"]*\"[^>]*>\s*</script>", re.S)


def on_page_content(html: str, page, config, files) -> str:
    if not page.file.src_uri.endswith(".ipynb"):
        return html
    return _REMOTE_SCRIPT.sub("", _MATHJAX.sub("", html))
