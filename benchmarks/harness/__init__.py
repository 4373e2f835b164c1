"""The benchmark harness: machine description, results writer, exact-name selection, problems, timing, peers.

- :mod:`.machine`: ``machine_info()``, the one description of the machine a result was measured on;
- :mod:`.writer`: ``Context`` (the exact reproducing command, the output folder) and ``Context.save``, which
  stores ``.json`` and renders ``.md`` / ``.png`` from it (``python -m benchmarks report`` re-renders);
- :mod:`.select`: exact-name selection of sampler rows (``--samplers a,b``);
- :mod:`.problems` / :mod:`.samplers`: shared targets with their quality measures, prior draws and sampling runs;
- :mod:`.timing`: interleaved rounds (single programs: :mod:`jaxsde.timing`);
- :mod:`.kdiffusion`, :mod:`.diffusers`: the k-diffusion and diffusers peer adapters;
- :mod:`.cli`: ``python -m benchmarks {list,run,report}``.
"""
