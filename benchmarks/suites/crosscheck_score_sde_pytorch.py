"""Cross-check jaxsde's NCSN++/DDPM++ port and ``load_pytorch`` against score_sde_pytorch itself.

``--repo``: a checkout of https://github.com/yang-song/score_sde_pytorch (nothing of it is vendored). Builds its
``models.ncsnpp.NCSNpp`` on CPU (``op.upfirdn2d`` replaced by diffusers' ``upfirdn2d_native``, configs as
namespaces) for small versions of several configs with perturbed random weights, saves a ``.pth`` in the published
layout, loads it with ``jaxsde.checkpoints.score_sde.load_pytorch`` and compares the forward passes.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime
import os
import subprocess
import sys
import tempfile
import types

import jax
import jax.numpy as jnp
import numpy as np

from jaxsde.checkpoints import score_sde
from jaxsde.models import ncsnpp

SMALL = dict(nf=16, image_size=16, attn_resolutions=(8,))
CASES = [
    ("ncsnpp_cifar10_ve", dict(ch_mult=(1, 2, 2), num_res_blocks=2), "sigma"),
    ("ddpmpp_cifar10_vp", dict(ch_mult=(1, 2, 2), num_res_blocks=2), "label"),
    ("ncsnpp_cifar10_vp", dict(ch_mult=(1, 2), num_res_blocks=1), "label"),
    ("ncsnpp_cifar10_ve", dict(ch_mult=(1, 2), num_res_blocks=1, progressive="output_skip",
                               progressive_input="input_skip", progressive_combine="cat"), "sigma"),
]
_STUB = ("from diffusers.models.upsampling import upfirdn2d_native\n\n\n"
         "def upfirdn2d(input, kernel, up=1, down=1, pad=(0, 0)):\n"
         "    return upfirdn2d_native(input, kernel, up=up, down=down, pad=pad)\n")


def _torch_config(cfg: ncsnpp.NCSNppConfig):
    fields = dataclasses.asdict(cfg)
    model = types.SimpleNamespace(**fields, normalization="GroupNorm", attention_type="ddpm", conv_size=3)
    data = types.SimpleNamespace(image_size=cfg.image_size, num_channels=cfg.num_channels, centered=cfg.centered)
    return types.SimpleNamespace(model=model, data=data, training=types.SimpleNamespace(continuous=True),
                                 device="cpu")


def arguments(parser):
    parser.add_argument("--repo", required=True, help="a checkout of yang-song/score_sde_pytorch")
    parser.add_argument("--full", action="store_true", help="also the full-size CIFAR-10 VE and VP configs (slow)")


def run(args, ctx):
    import torch

    try:
        commit = subprocess.run(["git", "-C", args.repo, "rev-parse", "HEAD"], capture_output=True, text=True,
                                check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown (not a git checkout)"
    lines = ["# jaxsde's NCSN++ / DDPM++ port vs score_sde_pytorch's own NCSNpp", "",
             f"`{ctx.command}` ({datetime.date.today()}; score_sde_pytorch {commit}; torch {torch.__version__}, "
             f"jax {jax.__version__})", "",
             "Perturbed random weights saved as a published-layout `.pth`, read by `load_pytorch`; one batch of 2 "
             "through both forward passes (float32, CPU).", "",
             "| config | overrides | parameters (torch / jax) | max abs error / max abs output |", "|---|---|---|---|"]
    cases = [(name, {**SMALL, **overrides}, kind) for name, overrides, kind in CASES]
    cases += [("ncsnpp_cifar10_ve", {}, "sigma"), ("ddpmpp_cifar10_vp", {}, "label")] if args.full else []
    stubs = tempfile.mkdtemp()  # score_sde_pytorch's CUDA op and its sde_lib, stubbed
    os.makedirs(os.path.join(stubs, "op"))
    for name, text in (("op/__init__.py", _STUB), ("sde_lib.py", "")):
        with open(os.path.join(stubs, name), "w") as f:
            f.write(text)
    sys.path[:0] = [stubs, args.repo]
    from models import ncsnpp as reference  # noqa: E402  (score_sde_pytorch's module)

    torch.manual_seed(0)
    for name, overrides, label_kind in cases:
        cfg = ncsnpp.get_config(name, **overrides)
        net = reference.NCSNpp(_torch_config(cfg)).eval()
        with torch.no_grad():
            for p in net.parameters():
                p.add_(0.05 * torch.randn_like(p))
        sd = collections.OrderedDict(("module." + k, v) for k, v in net.state_dict().items())
        shadow = [p.detach().clone() for p in net.parameters() if p.requires_grad]
        path = os.path.join(stubs, "checkpoint_1.pth")
        torch.save({"optimizer": {}, "model": sd, "ema": {"decay": 0.999, "num_updates": 1, "shadow_params": shadow},
                    "step": 1}, path)
        ckpt = score_sde.load_pytorch(path, cfg)
        x = torch.rand(2, cfg.num_channels, cfg.image_size, cfg.image_size)
        labels = torch.tensor([0.05, 7.0] if label_kind == "sigma" else [30.0, 900.0])
        with torch.no_grad():
            ref = net(x, labels).numpy().transpose(0, 2, 3, 1)
        out = jax.jit(ckpt.model.apply)({"params": ckpt.params}, jnp.asarray(x.numpy().transpose(0, 2, 3, 1)),
                                        jnp.asarray(labels.numpy()))
        err = float(np.max(np.abs(np.asarray(out) - ref)) / np.max(np.abs(ref)))
        n_torch = sum(p.numel() for p in net.parameters())
        n_jax = sum(int(np.prod(a.shape)) for a in jax.tree_util.tree_leaves(ckpt.params))
        print(f"{name} {overrides}: params torch {n_torch} jax {n_jax}; max |out - ref| / max |ref| = {err:.2e}",
              flush=True)
        lines.append(f"| {name} | {overrides or 'full size'} | {n_torch} / {n_jax} | {err:.2e} |")
    ctx.save("crosscheck_score_sde_pytorch", dict(lines=lines), md="\n".join(lines))
