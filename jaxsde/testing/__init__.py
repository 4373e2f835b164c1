"""Oracles for testing and benchmarking samplers: exact output laws on Gaussian targets
(:mod:`~jaxsde.testing.exact`), targets with exact scores and samples (:mod:`~jaxsde.testing.targets`),
sample-quality metrics (:mod:`~jaxsde.testing.metrics`) and the independent Diffrax reference
(:mod:`~jaxsde.testing.reference`). The library itself never imports from here; import the
submodules by name (``from jaxsde.testing import targets``)."""
