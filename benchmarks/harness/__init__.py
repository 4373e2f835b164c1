"""The benchmark harness: machine description, results writer, exact-name selection, peer adapters.

- :mod:`.machine`: ``machine_info()``, the one description of the machine a result was measured on;
- :mod:`.writer`: ``Context`` (the exact reproducing command, the output folder) and ``Context.save``, which
  stores ``.json`` and renders ``.md`` / ``.png`` from it (``python -m benchmarks report`` re-renders);
- :mod:`.select`: exact-name selection of sampler rows (``--samplers a,b``);
- :mod:`.kdiffusion`: a jaxsde score as k-diffusion's denoiser (the k-diffusion peer adapter);
- :mod:`.cli`: ``python -m benchmarks {list,run,report}``.

Timing is :mod:`jaxsde.timing` (``time_compiled``, ``compile_cpu_seconds``).
"""
