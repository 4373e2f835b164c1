"""The named suites of ``python -m benchmarks run NAME``; one module per suite (see :mod:`benchmarks.harness.cli`).

A suite module has a docstring (its first line is what ``list`` prints), ``arguments(parser)`` (its options),
``run(args, ctx)`` (the measurement; ``ctx`` is a :class:`benchmarks.harness.writer.Context`), and, where its
results can be re-rendered from their ``.json``, ``render(data) -> str`` (the ``.md``) and ``plot(data, path)``.
"""
