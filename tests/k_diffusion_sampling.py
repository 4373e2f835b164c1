"""k-diffusion 0.1.1's ``sampling.py``, loaded without its package ``__init__``.

The package's ``__init__`` imports its training stack (torchvision, wandb, scikit-image, ...);
``sampling.py`` needs only torch, torchdiffeq, torchsde, scipy and tqdm, plus
``utils.append_dims``, which is given here with the same body. ``load()`` returns the real,
unmodified module, or ``None`` when k-diffusion is not installed (``pip install --no-deps
k-diffusion==0.1.1.post1``).
"""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path


def _append_dims(x, target_dims):
    dims_to_append = target_dims - x.ndim
    if dims_to_append < 0:
        raise ValueError(f"input has {x.ndim} dims but target_dims is {target_dims}, which is less")
    return x[(...,) + (None,) * dims_to_append]


def load():
    if "k_diffusion.sampling" in sys.modules:
        return sys.modules["k_diffusion.sampling"]
    spec = importlib.util.find_spec("k_diffusion")
    if spec is None or not spec.submodule_search_locations:
        return None
    root = Path(list(spec.submodule_search_locations)[0])
    package = types.ModuleType("k_diffusion")
    package.__path__ = [str(root)]
    utils = types.ModuleType("k_diffusion.utils")
    utils.append_dims = _append_dims
    package.utils = utils
    sys.modules["k_diffusion"], sys.modules["k_diffusion.utils"] = package, utils
    sampling_spec = importlib.util.spec_from_file_location("k_diffusion.sampling", root / "sampling.py")
    module = importlib.util.module_from_spec(sampling_spec)
    sys.modules["k_diffusion.sampling"] = module
    sampling_spec.loader.exec_module(module)
    return module
