"""The one description of the machine a result was measured on (stored in every results ``.json``)."""

from __future__ import annotations

import datetime
import os
import platform
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def git_commit() -> str:
    """The repository's HEAD commit (short), or "" outside a checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    except OSError:
        return ""
    return out.stdout.strip()


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "")
    except OSError:
        return platform.processor()


def versions(*packages: str) -> dict:
    """The installed versions of ``packages`` (None where one is missing), read without importing them."""
    from importlib import metadata

    out = {}
    for name in packages:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def machine_info(*peers: str) -> dict:
    """Date (UTC), jax version, backend, devices, CPU model, count and load, Python, git commit, and the versions
    of the ``peers`` packages (e.g. ``"torch", "diffusers"``)."""
    import jax

    devices = jax.devices()
    return dict(date=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                jax=jax.__version__, backend=jax.default_backend(),
                devices=", ".join(sorted({d.device_kind for d in devices})) + f" x{len(devices)}",
                cpu=cpu_model(), cpus=os.cpu_count(), load=[round(v, 2) for v in os.getloadavg()],
                machine=platform.machine(), python=platform.python_version(), git_commit=git_commit(),
                versions=versions(*peers))


def describe(machine: dict) -> str:
    """One line for a results ``.md``."""
    return (f"{machine.get('date', '?')}, jax {machine.get('jax', '?')} on {machine.get('backend', '?')} "
            f"({machine.get('devices', '?')}), {machine.get('cpus', '?')} CPUs, load {machine.get('load', '?')}, "
            f"commit {machine.get('git_commit') or '?'}")


def normalize(machine: dict) -> dict:
    """A stored machine description with the current keys (results stored before the harness named some keys
    otherwise: ``jax_version``, ``cpu_count``, ``load_average`` / ``load_avg``, peer versions at the top level)."""
    out = dict(machine)
    for new, old in (("jax", "jax_version"), ("cpus", "cpu_count"), ("load", "load_average"), ("load", "load_avg")):
        if out.get(new) is None and old in machine:
            out[new] = machine[old]
    out.setdefault("versions", {k: machine[k] for k in ("torch", "diffusers") if k in machine})
    return out
