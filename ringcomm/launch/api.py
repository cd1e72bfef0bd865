"""``launch(config) -> int``: plan the job, start guarded ranks, report."""

from __future__ import annotations

import os
import re
import shlex
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
    WrappedLaunch,
    host_entries,
    hostfile_vars,
    plan_job,
    rank_env,
)
from .supervisor import Job, JobResult, RankExit, RankProcess, Reason

__all__ = ["describe_plan", "failure_report", "launch", "rank_processes", "run_preflight"]

_REPORT_LINES = 10
_PREFIX = "ringcomm launch:"


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


def describe_plan(plan: JobPlan, started: list[RankProcess] | WrappedLaunch) -> str:
    """Return the human-readable dry-run text: what starts, where, with which environment.

    ``started`` is what the launcher runs: a guard per rank (each rank's command
    and environment are shown), or another launcher that starts the ranks (its
    command line, the variables every rank gets and its hostfile).
    """
    if isinstance(started, WrappedLaunch):
        lines = [f"job: {started.ranks} ranks, backend {plan.backend}, started by {started.tool}",
                 f"{started.tool}: {shlex.join(started.argv)}", *_env_lines(started.env)]
        if started.hostfile is not None:
            lines.append("hostfile:")
            lines += [f"  {line}" for line in started.hostfile.splitlines()]
        return "\n".join(lines)
    lines = [f"job: {plan.size} ranks, backend {plan.backend}"]
    lines.append(f"rank hostfile: {dump_rank_hostfile(plan.rank_hostfile())}")
    for spec, proc in zip(plan.ranks, started):
        where = "local" if spec.local else "ssh"
        lines.append(f"rank {spec.rank} on {spec.host} ({where}):")
        lines.append(f"  guard: {shlex.join(proc.argv)}")
        lines.append(f"  program: {shlex.join(plan.argv)}")
        if plan.config.cwd:
            lines.append(f"  cwd: {plan.config.cwd}")
        lines += _env_lines(rank_env(plan, spec))
        for key in hostfile_vars():
            lines.append(f"  env: {key}=<temp file with the rank hostfile>")
    return "\n".join(lines)


def _env_lines(env: dict[str, str]) -> list[str]:
    """Return one ``env:`` line per variable, sorted; the token never appears."""
    return [f"  env: {key}={'<secret>' if key.endswith('TOKEN') else env[key]}"
            for key in sorted(env)]


def failure_report(result: JobResult, python: str = "python", *,
                   started_by: str | None = None) -> list[str]:
    """Return the lines printed to stderr when a job did not succeed.

    ``started_by`` names another launcher (mpirun, srun) that was the job's one
    process: it numbers the ranks and reports them itself, and its output, every
    rank's lines mixed, was shown live, so the report names it, not a rank.
    """
    lines = []
    stopped = [e.rank for e in result.exits if e.stopped]
    if result.reason == Reason.FAILED and result.first_failure is not None:
        if started_by is not None:
            lines.append(f"{_PREFIX} {started_by} {result.first_failure.describe()}")
        else:
            lines += _first_failure(result.first_failure, result, python)
    elif result.reason == Reason.TIMEOUT:
        lines.append(f"{_PREFIX} job timed out (--timeout); stopped {started_by or 'every rank'}")
    elif result.reason == Reason.INTERRUPTED:
        lines.append(f"{_PREFIX} interrupted; stopped {started_by or 'every rank'}")
    silent = _named_silent(result) if started_by is None else None
    if silent:
        lines.append(f"{_PREFIX} {silent}")
    if stopped and result.reason == Reason.FAILED:
        lines.append(f"{_PREFIX} stopped the other ranks: {', '.join(map(str, stopped))}")
    lines.append(f"{_PREFIX} exit code {result.exit_code}")
    return lines


def _first_failure(f: RankExit, result: JobResult, python: str) -> list[str]:
    """Return the lines on the rank that failed first (``f``): how, where, and its error."""
    pid = f"pid {f.pid}" if f.pid is not None else "pid unknown"
    lines = [f"{_PREFIX} rank {f.rank} failed first: {f.describe()} (host {f.host}, {pid})"]
    if not f.local and f.pid is None:
        from .remote import explain_ssh_failure

        reason = explain_ssh_failure(f.host, f.code, f.stderr_tail, python)
        if reason:
            lines.append(f"{_PREFIX} {reason}")
    tail = f.stderr_tail[-_REPORT_LINES:]
    errors = _ringcomm_errors(result)
    if f.rank in {r for rs in errors.values() for r in rs}:
        # Its traceback was shown live; the error once, with every rank that had it,
        # says more than the same traceback again (the --output-dir logs keep it whole).
        for text, ranks in errors.items():
            who = "rank" if len(ranks) == 1 else "ranks"
            lines.append(f"{_PREFIX} {who} {', '.join(map(str, ranks))}: {text}")
    elif tail:
        lines.append(f"{_PREFIX} last {len(tail)} lines of rank {f.rank}'s stderr:")
        lines.extend(f"  | {t}" for t in tail)
    else:
        lines.append(f"{_PREFIX} rank {f.rank} wrote nothing to stderr")
    return lines


# The last line of a traceback of one of ringcomm's own errors.
_RINGCOMM_ERROR = re.compile(r"(?:ringcomm\.errors\.)?((?:Init|Connect|Peer|PeerAborted|CommTimeout|"
                             r"Mismatch|Ringcomm)Error): (.*)")


def _ringcomm_errors(result: JobResult) -> dict[str, list[int]]:
    """Return each distinct ringcomm error the failed ranks died of, with their ranks.

    Ranks that report the same failure differ only in who says it ("rank 0 failed
    in ..."), so the first failure's text stands for the ones that repeat it.
    """
    found: dict[str, list[int]] = {}
    for e in sorted(result.exits, key=lambda e: e.rank):
        if e.code == 0 or not e.stderr_tail:
            continue
        m = _RINGCOMM_ERROR.fullmatch(e.stderr_tail[-1].strip())
        if m is None:
            continue
        kind, text = m.groups()
        key = next((k for k in found if text in k or k.split(": ", 1)[-1] in text), None)
        found.setdefault(key or f"{kind}: {text}", []).append(e.rank)
    return found


_SILENT = re.compile(r"no answer to status queries from (rank \d+ \([^)]*\))")


def _named_silent(result: JobResult) -> str | None:
    """Return a line naming the ranks the others found frozen or cut off, if any did."""
    named: dict[str, list[int]] = {}
    for e in result.exits:
        for line in e.stderr_tail:
            for who in _SILENT.findall(line):
                if e.rank not in named.setdefault(who, []):
                    named[who].append(e.rank)
    if not named:
        return None
    return "; ".join(f"{who} stopped answering (frozen, stopped, or cut off), as rank(s) "
                     f"{', '.join(map(str, sorted(by)))} reported" for who, by in named.items())


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
