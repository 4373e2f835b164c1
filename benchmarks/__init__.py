"""jaxsde's benchmarks: one harness (:mod:`benchmarks.harness`) and its named suites (:mod:`benchmarks.suites`).

    python -m benchmarks list                 # the suites and what each measures
    python -m benchmarks run NAME [options]   # run one suite (``run NAME --help`` for its options)
    python -m benchmarks report [--out DIR]   # re-render every .md/.png from the .json the harness stored
"""
