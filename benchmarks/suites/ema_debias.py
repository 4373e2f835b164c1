"""The embedded digits models before and after the EMA fix, side by side, on the same keys.

The plain EMA of training (kept ``ema_decay ** steps`` of the random initialisation) is rebuilt exactly from the
shipped debiased one, ``plain = share * init + (1 - share) * debiased``; both run with the same solvers and keys:
FD-digits +- bootstrap sd (50 resamples) and the real-vs-real floor. ``--em1000`` adds EM-1000 on the current
weights.
"""

from __future__ import annotations

import jax

import jaxsde
from jaxsde.testing.metrics.digits import DigitsMetrics
from jaxsde.train_config import TrainConfig
from jaxsde.training import init_params

from ..harness.cli import options
from ..harness.machine import describe, machine_info
from ..harness.samplers import sample_chunks
from ..harness.writer import columns, progress


def plain_ema(ckpt):
    """The plain EMA of the run (what was shipped before the fix), rebuilt from the debiased one."""
    config = TrainConfig.from_dict(ckpt.config)
    share = config.ema_decay ** config.steps
    init = init_params(config, ckpt.shape)
    return jax.tree_util.tree_map(lambda d, i: share * i + (1.0 - share) * d, ckpt.params, init), share


def arguments(parser):
    options(parser, model="digits", n=1000, batch=500)
    parser.add_argument("--em1000", action="store_true", help="add EM-1000 on the current weights")


def run(args, ctx):
    ckpt = jaxsde.pretrained(args.model)
    if not TrainConfig.from_dict(ckpt.config).ema_debias:
        raise SystemExit(f"{args.model}: its weights hold the plain EMA; nothing to compare")
    plain, share = plain_ema(ckpt)
    weights = {"plain EMA (before)": plain, "debiased EMA (now)": ckpt.params}
    batch = min(args.batch, args.n)
    solvers = [("EM 200", jaxsde.EulerMaruyama(200)), ("DPM++2M 20", jaxsde.DPMSolverPP(19, order=2)),
               ("DDIM 50", jaxsde.DDIM(49)), ("PF 1e-3", jaxsde.ProbabilityFlow(rtol=1e-3, atol=1e-3)),
               ("GGF 0.05", jaxsde.GottaGoFast(rtol=0.05)), ("GGF 0.1", jaxsde.GottaGoFast(rtol=0.1))]
    metrics = DigitsMetrics()
    rows = []
    plan = [(name, solver, label) for name, solver in solvers for label in weights]
    if args.em1000:
        plan.append(("EM 1000", jaxsde.EulerMaruyama(1000), "debiased EMA (now)"))
    for name, solver, label in plan:
        x, nfe, fails, wall, _ = sample_chunks(ckpt.sde, ckpt.score_fn, weights[label], ckpt.shape, solver, args.n, 0,
                                               batch)
        r = metrics.report(x, ckpt.data_range, bootstrap=50)
        row = dict(solver=name, weights=label, mean_nfe=float(nfe.mean()), failed=fails, wall_s=wall,
                   **{k: float(v) for k, v in r.items()})
        rows.append(row)
        progress(row, "solver", "weights", "mean_nfe", "fd", "fd_std", "kid", "wall_s", "failed")
    ctx.save(f"ema_debias_{args.model}", dict(machine=machine_info(), model=args.model, n=args.n, init_share=share,
                                              rows=rows))


def render(data: dict) -> str:
    rows = data["rows"]
    model = data.get("model") or data["command"].split("--model ")[1].split()[0]
    lines = [f"# {model}: the plain EMA (shipped before) vs the debiased EMA (shipped now)", "",
             f"Command: `{data['command']}`", "",
             f"{describe(data['machine'])}; n = {data['n']} samples per row, the same keys in every row; the plain "
             f"EMA holds {data['init_share']:.4f} of the random initialisation.", "",
             *columns(rows, {"solver": "{solver}", "weights": "{weights}", "mean NFE": "{mean_nfe:.1f}",
                             "FD-digits +- bootstrap std": "{fd:.2f} +- {fd_std:.2f}", "KID": "{kid:.3f}",
                             "confident": "{confident:.2f}", "wall s": "{wall_s:.1f}", "failed": "{failed}"})]
    lines += ["", f"Real-vs-real floor: FD {rows[0]['fd_floor']:.3f}, KID {rows[0]['kid_floor']:.3f} "
              f"(n={int(rows[0]['n_floor'])} held-out vs train)."]
    return "\n".join(lines)
