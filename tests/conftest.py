import os

# Compile time, not run time, is what the test programs cost on a CPU: almost every test compiles a small
# solver program (a while loop over a few steps of a tiny network or a closed-form score) and runs it once.
# XLA's backend optimisation level 0 (no LLVM optimisation passes) compiles them in about 60% of the CPU time
# (12 registry solvers' sampling programs, 2 cores: 18 s -> 10 s) and runs them a little slower. Set before
# jax creates its CPU client, so the subprocesses that tests start (CLI runs) inherit it too; an XLA_FLAGS
# that already names the option wins.
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()

# One session's processes (the xdist workers, the CLI subprocesses tests start) share a compilation cache: a
# program they have already compiled (the same HLO and options: a test rebuilding a jitted closure, the other
# worker, a subprocess) is read back instead of compiled again (4 solver test modules in one process: XLA compile
# 177 s -> 126 s). A fresh directory per session, removed at its end, so nothing carries over between runs; a
# JAX_COMPILATION_CACHE_DIR already set wins (and is kept).
_SESSION_CACHE = None
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    import tempfile

    _SESSION_CACHE = tempfile.mkdtemp(prefix="jaxsde-tests-compile-cache-")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _SESSION_CACHE
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import jax  # noqa: E402
import pytest  # noqa: E402


# With -n N, xdist hands the workers whole test files (its --dist loadfile) unless --dist is given: a module's
# tests share compiled programs, module fixtures (a trained run, jitted networks) and the process's warm caches,
# which the default --dist load splits over every worker, each then building them again (6 heavy modules,
# -n 2 on 2 cores: load 172 s, worksteal 163 s, loadfile 152 s).
def _dist_given(config) -> bool:
    args = [*config.invocation_params.args, *os.environ.get("PYTEST_ADDOPTS", "").split(), *config.getini("addopts")]
    return any(a == "--dist" or a.startswith("--dist=") for a in args)


try:
    from xdist.scheduler import LoadFileScheduling
except ImportError:  # pytest without xdist: no -n, nothing to schedule
    LoadFileScheduling = None

if LoadFileScheduling is not None:

    @pytest.hookimpl(tryfirst=True)
    def pytest_xdist_make_scheduler(config, log):
        if config.getvalue("dist") == "load" and not _dist_given(config):
            return LoadFileScheduling(config, log)
        return None


def pytest_unconfigure(config):
    if _SESSION_CACHE is not None:
        import shutil

        shutil.rmtree(_SESSION_CACHE, ignore_errors=True)


@pytest.fixture
def x64():
    """Run a test in float64 (convergence-order tests need it)."""
    with jax.enable_x64(True):
        yield


@pytest.fixture
def key():
    return jax.random.PRNGKey(0)


# Opt-in compile-time report: JAXSDE_COMPILE_REPORT=path records, per test module, the wall time jax spends
# tracing to jaxprs, lowering to MLIR and compiling with XLA (jax.monitoring's compile events), the number of
# XLA compilations and how many of them the compilation cache served. Each process (xdist worker) appends one
# JSON line per module to `path`; the controller prints the totals at the end of the session. Nested traces (a
# jit traced inside another) are counted once: per event the time spans are merged before summing. Programs
# compiled by subprocesses a test starts (CLI runs) are not counted.
_COMPILE_REPORT = os.environ.get("JAXSDE_COMPILE_REPORT")
_COMPILE_EVENTS = {
    "/jax/core/compile/jaxpr_trace_duration": "trace_s",
    "/jax/core/compile/jaxpr_to_mlir_module_duration": "lower_s",
    "/jax/core/compile/backend_compile_duration": "compile_s",
}
_COUNTS = [*_COMPILE_EVENTS.values(), "compiles", "cache_hits"]
_compile_spans: dict[str, list[tuple[str, float, float]]] = {}
_cache_hits: dict[str, int] = {}
_compile_module = ["<collection>"]


def _merged_seconds(spans: list[tuple[float, float]]) -> float:
    total, end = 0.0, float("-inf")
    for s, e in sorted(spans):
        if e > end:
            total += e - max(s, end)
            end = e
    return total


def _record_compile_span(event: str, start: float, end: float, **kwargs) -> None:
    if event in _COMPILE_EVENTS:
        _compile_spans.setdefault(_compile_module[0], []).append((event, start, end))


def _record_cache_hit(event: str, **kwargs) -> None:
    if event == "/jax/compilation_cache/cache_hits":
        _cache_hits[_compile_module[0]] = _cache_hits.get(_compile_module[0], 0) + 1


def _flush_compile_report() -> None:
    import json

    lines = []
    for module in {*_compile_spans, *_cache_hits}:
        spans = _compile_spans.get(module, [])
        row = {"module": module}
        for event, name in _COMPILE_EVENTS.items():
            row[name] = round(_merged_seconds([(s, e) for ev, s, e in spans if ev == event]), 3)
        row["compiles"] = sum(ev == "/jax/core/compile/backend_compile_duration" for ev, _, _ in spans)
        row["cache_hits"] = _cache_hits.get(module, 0)
        lines.append(json.dumps(row) + "\n")
    _compile_spans.clear()
    _cache_hits.clear()
    if lines:
        with open(_COMPILE_REPORT, "a") as f:
            f.write("".join(lines))


if _COMPILE_REPORT:
    jax.monitoring.register_event_time_span_listener(_record_compile_span)
    jax.monitoring.register_event_listener(_record_cache_hit)

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_protocol(item, nextitem):
        module = item.nodeid.split("::")[0]
        if module != _compile_module[0]:
            _flush_compile_report()  # one module's spans at a time (xdist may interleave modules)
            _compile_module[0] = module
        yield

    def pytest_configure(config):
        if not hasattr(config, "workerinput") and os.path.exists(_COMPILE_REPORT):
            os.remove(_COMPILE_REPORT)  # a fresh report per session (workers start after this)

    def pytest_sessionfinish(session):
        _flush_compile_report()

    def _compile_row(module: str, t: dict) -> str:
        return (f"{module:<48} {t['trace_s']:8.1f} {t['lower_s']:8.1f} {t['compile_s']:8.1f} {t['compiles']:8d}"
                f" {t['cache_hits']:8d}")

    def pytest_terminal_summary(terminalreporter):
        import json

        if hasattr(terminalreporter.config, "workerinput") or not os.path.exists(_COMPILE_REPORT):
            return
        totals: dict[str, dict[str, float]] = {}
        with open(_COMPILE_REPORT) as f:
            for line in f:
                row = json.loads(line)
                t = totals.setdefault(row["module"], dict.fromkeys(_COUNTS, 0))
                for k in t:
                    t[k] += row.get(k, 0)
        tr = terminalreporter
        tr.write_sep("=", f"compile time per module ({_COMPILE_REPORT})")
        tr.write_line(f"{'module':<48} {'trace s':>8} {'lower s':>8} {'XLA s':>8} {'compiles':>8} {'of them':>8}")
        tr.write_line(f"{'':<48} {'':>8} {'':>8} {'':>8} {'':>8} {'cached':>8}")
        for module, t in sorted(totals.items(), key=lambda kv: -sum(kv[1][k] for k in _COMPILE_EVENTS.values())):
            tr.write_line(_compile_row(module, t))
        tr.write_line(_compile_row("total", {k: sum(t[k] for t in totals.values()) for k in _COUNTS}))
