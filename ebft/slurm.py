"""Slurm helpers: the GPU-count check of the training entry point and the multi-node launcher.

* :func:`check_visible_gpus` fails fast when a job that was given N GPUs sees a different number (the
  executor plugin has produced jobs that see one GPU out of several: snakemake-executor-plugin-slurm
  issues 316 and 459). The workflow's launcher exports ``EBFT_EXPECTED_GPUS`` (GPUs per node) for every job
  that requested GPUs; :func:`expected_gpus` reads it (0: not a GPU job, nothing to check).
* ``python -m ebft.slurm launch --gpus-per-node G -- <ebft args>`` runs on every node of a multi-node job
  (``srun --nodes N --ntasks-per-node 1``) and starts ``accelerate launch`` with Slurm's node list as the
  rendezvous: the first host of ``SLURM_JOB_NODELIST`` is the main process, ``SLURM_NODEID`` the machine rank.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Mapping

ENV_EXPECTED = "EBFT_EXPECTED_GPUS"
RENDEZVOUS_PORT = 29500


class GpuCountError(RuntimeError):
    pass


def expected_gpus(env: Mapping[str, str] | None = None) -> int:
    """GPUs per node the job was given (``EBFT_EXPECTED_GPUS``), 0 when it asked for none."""
    return int((env if env is not None else os.environ).get(ENV_EXPECTED, "0") or 0)


def _cuda_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def check_visible_gpus(expected: int, count: Callable[[], int] | None = None) -> None:
    """Raise :class:`GpuCountError` unless exactly ``expected`` GPUs are visible (no check when 0)."""
    if expected <= 0:
        return
    visible = (count or _cuda_count)()
    if visible != expected:
        raise GpuCountError(
            f"this job was given {expected} GPU(s) but sees {visible} "
            f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r}); check the Slurm resources "
            "(gpu, tasks: 0) of the rule in the profile")


def _scontrol_hostnames(nodelist: str) -> list[str]:
    out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, check=True)
    return out.stdout.split()


def multinode_command(gpus_per_node: int, args: list[str], env: Mapping[str, str] | None = None,
                      hostnames: Callable[[str], list[str]] = _scontrol_hostnames,
                      port: int = RENDEZVOUS_PORT) -> list[str]:
    """The ``accelerate launch`` command of this node in a multi-node Slurm job."""
    env = env if env is not None else os.environ
    nodes = int(env["SLURM_NNODES"])
    main_host = hostnames(env["SLURM_JOB_NODELIST"])[0]
    return ["accelerate", "launch", "--multi_gpu", "--num_machines", str(nodes), "--machine_rank",
            env["SLURM_NODEID"], "--num_processes", str(nodes * gpus_per_node), "--main_process_ip", main_host,
            "--main_process_port", str(port), "--rdzv_backend", "static", "-m", "ebft.cli", *args]


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m ebft.slurm")
    sub = p.add_subparsers(dest="command", required=True)
    launch = sub.add_parser("launch", help="multi-node accelerate launch (run once per node under srun)")
    launch.add_argument("--gpus-per-node", type=int, required=True)
    launch.add_argument("--port", type=int, default=RENDEZVOUS_PORT)
    launch.add_argument("args", nargs=argparse.REMAINDER, help="ebft arguments (after --)")
    ns = p.parse_args(argv)
    args = ns.args[1:] if ns.args[:1] == ["--"] else ns.args
    cmd = multinode_command(ns.gpus_per_node, args, port=ns.port)
    env = {**os.environ, ENV_EXPECTED: str(ns.gpus_per_node)}
    os.execvpe(cmd[0], cmd, env)
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
