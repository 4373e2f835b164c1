"""The diffusers peer: a random-weight ``UNet2DModel`` in google/ddpm-cifar10-32's layout with its ``DDIMScheduler``,
jaxsde's DDIM on the scheduler's grid, and diffusers' own DDIM loop (``DDIMPipeline``'s, eta 0, no final clamp).

diffusers and torch are imported inside the functions (the GPU machine stages diffusers from a wheel at run time).
"""

from __future__ import annotations

import os
from typing import Any

N_TRAIN = 1000  # DDPM's training timesteps


def unet_config(reduced: bool = False, **overrides: Any) -> dict:
    """``UNet2DModel``'s config: DDPM CIFAR-10 (35.7M parameters), or a small network of the same layout."""
    from jaxsde.models.ddpm_unet import DDPM_CIFAR10_CONFIG

    cfg = dict(DDPM_CIFAR10_CONFIG)
    if reduced:
        cfg.update(block_out_channels=[32, 64, 64, 64], layers_per_block=1, norm_num_groups=8)
    return {**cfg, **overrides}


def scheduler():
    """diffusers' ``DDIMScheduler`` with DDPM's linear betas, trailing spacing and ``alpha_bar = 1`` at the end."""
    from diffusers import DDIMScheduler

    return DDIMScheduler(num_train_timesteps=N_TRAIN, beta_schedule="linear", beta_start=1e-4, beta_end=0.02,
                         timestep_spacing="trailing", set_alpha_to_one=True, clip_sample=False, steps_offset=0,
                         prediction_type="epsilon")


def save_weights(folder: str, config: dict) -> str:
    """A ``UNet2DModel(**config)`` with diffusers' initialisation at ``torch.manual_seed(0)`` and :func:`scheduler`,
    saved with ``save_pretrained`` (safetensors) into ``folder`` unless already there; returns ``folder``."""
    import torch
    from diffusers import UNet2DModel

    if not os.path.exists(os.path.join(folder, "diffusion_pytorch_model.safetensors")):
        torch.manual_seed(0)
        UNet2DModel(**config).save_pretrained(folder, safe_serialization=True)
        scheduler().save_pretrained(folder)
    return folder


def ddim_solver(sched, k_steps: int):
    """``jaxsde.DDIM`` on the ``k_steps``-step grid of ``sched`` (set to ``k_steps``), ending with the Tweedie step
    (diffusers' last step to ``alpha_bar = 1``): ``k_steps`` network evaluations, as diffusers'."""
    import jaxsde
    from jaxsde.solvers.exponential import diffusers_grid

    sched.set_timesteps(k_steps)
    grid = diffusers_grid(sched.timesteps.numpy(), N_TRAIN, end_at_first_entry=False)
    return jaxsde.DDIM(len(grid) - 1, grid=grid)


def ddim_loop(tnet, sched, x_T, k_steps: int, device: str = "cpu"):
    """diffusers' DDIM loop from the NCHW torch ``x_T``: ``sched.step(tnet(x, t).sample, t, x, eta=0)`` over the
    ``k_steps`` timesteps under ``torch.inference_mode`` (synchronised on CUDA)."""
    import torch

    sched.set_timesteps(k_steps)
    x = x_T.to(device)
    with torch.inference_mode():
        for t in sched.timesteps:
            x = sched.step(tnet(x, t.to(device)).sample, t, x, eta=0.0).prev_sample
    if device == "cuda":
        torch.cuda.synchronize()
    return x


def ddim_setup(folder: str, batch: int, device: str = "cpu"):
    """Both sides of :func:`save_weights`' network and one draw: ``(ckpt, tnet, sched, x_T, x_T_j, keys)``: jaxsde's
    checkpoint, diffusers' ``UNet2DModel`` (eval mode, on ``device``) and ``DDIMScheduler`` read from ``folder``;
    ``x_T``: ``(batch, C, H, W)`` torch normals of ``torch.Generator().manual_seed(0)``, ``x_T_j`` the same in NHWC
    JAX; ``keys``: ``batch`` keys split from ``PRNGKey(0)``."""
    import jax
    import jax.numpy as jnp
    import torch
    from diffusers import DDIMScheduler, UNet2DModel

    import jaxsde

    ckpt = jaxsde.checkpoints.load(folder, "diffusers")
    tnet = UNet2DModel.from_pretrained(folder).eval().to(device)
    h, w, c = ckpt.shape
    x_T = torch.randn((batch, c, h, w), generator=torch.Generator().manual_seed(0))
    return (ckpt, tnet, DDIMScheduler.from_pretrained(folder), x_T, jnp.asarray(x_T.numpy().transpose(0, 2, 3, 1)),
            jax.random.split(jax.random.PRNGKey(0), batch))


def ddim_program(ckpt, solver, keys, denoise: bool = True):
    """``(params, x_T) -> (x, per-sample NFE)``: ``jaxsde.solve_batch`` of ``solver`` on the checkpoint's score."""
    import jaxsde

    def program(params, x):
        sol = jaxsde.solve_batch(keys, ckpt.sde, ckpt.score_fn(params), solver, x, denoise=denoise)
        return sol.x, sol.stats.nfe

    return program


def difference(x_jax, x_torch) -> dict:
    """jaxsde's NHWC samples against diffusers' NCHW torch ones: max abs and relative L2 difference, output scale."""
    import numpy as np

    xj, xt = np.asarray(x_jax), x_torch.float().cpu().numpy().transpose(0, 2, 3, 1)
    return dict(max_abs_diff=float(np.max(np.abs(xj - xt))), out_abs_max=float(np.max(np.abs(xt))),
                rel_l2_diff=float(np.linalg.norm(xj - xt) / np.linalg.norm(xt)))
