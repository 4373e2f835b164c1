"""A small resumable ``generate`` job for the CLI tests: a Gaussian mixture (exact score) through
the loop behind ``jaxsde generate`` (:func:`jaxsde.apps.generate_job.generate_to_dir`).

As a script (the SIGKILL test): ``python mixture_job.py DIR N [--slow-writes]``. Its chunks take
milliseconds, so ``--slow-writes`` adds 20 ms around each file write (a slow disk) to give kills a
run of ~1 s to land in, mid-chunk and mid-write.
"""

import sys
import time

import jax

import jaxsde
from jaxsde.apps import generate_job
from jaxsde.checkpoints import io as checkpoint_io
from jaxsde.testing import targets


def run(folder, n: int, slow_writes: bool = False) -> dict:
    if slow_writes:
        def slow_write(path, data, write=checkpoint_io.atomic_write):
            time.sleep(0.01)
            write(path, data)
            time.sleep(0.01)

        generate_job.atomic_write = slow_write
    sde = jaxsde.VPSDE()
    mixture = targets.GaussianMixture.random(jax.random.PRNGKey(3), 4, (8,))
    solver = jaxsde.GottaGoFast(rtol=0.02)
    manifest = dict(model="mixture", solver="ggf", solver_repr=repr(solver), n=n, seed=0, batch_size=8,
                    chunk_size=4, shape=[8], data_range=[-1.0, 1.0])
    return generate_job.generate_to_dir(str(folder), manifest, sde, lambda p: mixture.score(sde), None, solver,
                                        progress=False)


if __name__ == "__main__":
    run(sys.argv[1], int(sys.argv[2]), slow_writes="--slow-writes" in sys.argv[3:])
