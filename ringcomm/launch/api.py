"""``launch(config) -> int``: plan the job, start guarded ranks, report."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TextIO

from .. import trace
from ..environment import dump_rank_hostfile
from . import commands
from .options import LaunchConfig, LaunchError
from .output import Output
from .plan import (
    JobPlan,
    RankSpec,
    host_entries,
    hostfile_vars,
    plan_job,
    rank_env,
)
from .report import PREFIX as _PREFIX
from .report import describe_plan, failure_report
from .supervisor import Job, RankProcess

__all__ = ["launch", "rank_processes", "run_preflight"]



def _remote_argv(plan: JobPlan, spec: RankSpec) -> list[str]:
    from . import remote

    return remote.ssh_guard_argv(spec.host, plan.config.python_path)


def rank_processes(plan: JobPlan) -> list[RankProcess]:
    """Return the guard process for every rank of ``plan`` (pure: starts nothing)."""
    text = dump_rank_hostfile(plan.rank_hostfile())
    source = commands.guard_source()
    out = []
    for spec in plan.ranks:
        # A remote rank starts in this directory when it exists there, as MLX does.
        fallback = None if spec.local or plan.config.cwd else os.getcwd()
        start = commands.start_frame(
            plan.argv, rank_env(plan, spec), cwd=plan.config.cwd, hostfile=text,
            hostfile_vars=hostfile_vars(), grace=plan.config.grace, cwd_fallback=fallback,
        )
        if spec.local:
            argv = commands.guard_argv(plan.config.python_path)
        else:
            argv = _remote_argv(plan, spec)
        out.append(RankProcess(rank=spec.rank, host=spec.host, local=spec.local,
                               argv=argv, preamble=source + start))
    return out


def run_preflight(config: LaunchConfig, plan: JobPlan, *, stderr: TextIO) -> int:
    """Run ``ringcomm check`` for the job's hosts; return 0 when every check passed."""
    try:
        from ..hosts import preflight as check
    except ImportError as e:
        raise LaunchError(f"--check needs ringcomm.check, which cannot be imported: {e}") \
            from None
    source = host_entries(config)
    program = config.command[0] if config.command[0].endswith(".py") else None
    report = check.run_checks(
        source.base, repeat=source.repeat, program=program, python=config.python,
        backend=plan.backend, starting_port=config.starting_port, cwd=config.cwd,
    )
    print(check.format_report(report), file=stderr, flush=True)
    if not report.ok:
        print(f"{_PREFIX} --check found problems; nothing was started", file=stderr, flush=True)
        return 1
    return 0


def launch(config: LaunchConfig, *, stderr: TextIO | None = None) -> int:
    """Run the job described by ``config``; return its exit code (0 only if every rank was 0).

    With ``max_restarts`` N, a job that failed (not one that timed out or was
    interrupted) starts again, up to N times, on fresh ports and a fresh token,
    with RINGCOMM_RESTART counting the attempts. Raises LaunchError (or
    HostfileError) when the job cannot be planned.
    """
    err = stderr if stderr is not None else sys.stderr
    for attempt in range(config.max_restarts + 1):
        code = _attempt(config, attempt, err)
        if code in (0, 124, 130) or config.dry_run or attempt == config.max_restarts:
            break  # success, --timeout, Ctrl-C, or no restart left
        print(f"{_PREFIX} restarting the job (restart {attempt + 1} of {config.max_restarts}) "
              f"after exit code {code}", file=err, flush=True)
    if config.trace is not None and not config.dry_run:
        _merge_trace(config.trace, err)
    return code


def _attempt(config: LaunchConfig, attempt: int, err: TextIO) -> int:
    if config.launcher == "srun":
        from .srun import launch_srun

        return launch_srun(config, stderr=err, restart=attempt)
    plan = plan_job(config, restart=attempt)
    if config.check and not config.dry_run and attempt == 0:
        code = run_preflight(config, plan, stderr=err)
        if code != 0:
            return code
    if plan.backend == "mpi":
        from .mpi import launch_mpi

        return launch_mpi(plan, stderr=err)
    processes = rank_processes(plan)
    if config.dry_run:
        print(describe_plan(plan, processes), file=sys.stdout, flush=True)
        return 0
    if config.verbose:
        print(describe_plan(plan, processes), file=err, flush=True)
    output = Output(tag=config.tag_output, output_dir=config.output_dir)
    job = Job(processes, output, grace=config.grace, timeout=config.timeout,
              forward_stdin=config.forward_stdin)
    result = job.run()
    if result.exit_code != 0:
        for line in failure_report(result, config.python_path):
            print(line, file=err, flush=True)
    return result.exit_code


def _merge_trace(directory: Path, err: TextIO) -> None:
    """Join the ranks' timelines written on this host into DIR/trace.json."""
    files = sorted(directory.glob("rank*.json"))
    if not files:
        print(f"{_PREFIX} --trace: no rank wrote a timeline to {str(directory)!r} (ranks on "
              "other hosts write theirs there, on their own host)", file=err, flush=True)
        return
    out = directory / "trace.json"
    try:
        count = trace.merge(files, out)
    except (OSError, ValueError) as e:
        print(f"{_PREFIX} --trace: cannot merge the timelines in {str(directory)!r}: {e}",
              file=err, flush=True)
        return
    print(f"{_PREFIX} timeline of {len(files)} rank(s), {count} events: {out} "
          "(open it in ui.perfetto.dev)", file=err, flush=True)
