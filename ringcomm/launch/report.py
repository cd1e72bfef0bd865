"""What the launcher tells the user: the plan it would run, and the first failure of a job.

Every way of starting ranks (the guards, mpirun, srun) reports through these two
functions, so a user reads one format whatever started the job.
"""

from __future__ import annotations

import re
import shlex

from ..environment import dump_rank_hostfile
from .plan import JobPlan, WrappedLaunch, hostfile_vars, rank_env
from .supervisor import JobResult, RankExit, RankProcess, Reason

__all__ = ["PREFIX", "describe_plan", "failure_report"]

_REPORT_LINES = 10
PREFIX = "ringcomm launch:"


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
            lines.append(f"{PREFIX} {started_by} {result.first_failure.describe()}")
        else:
            lines += _first_failure(result.first_failure, result, python)
    elif result.reason == Reason.TIMEOUT:
        lines.append(f"{PREFIX} job timed out (--timeout); stopped {started_by or 'every rank'}")
    elif result.reason == Reason.INTERRUPTED:
        lines.append(f"{PREFIX} interrupted; stopped {started_by or 'every rank'}")
    silent = _named_silent(result) if started_by is None else None
    if silent:
        lines.append(f"{PREFIX} {silent}")
    if stopped and result.reason == Reason.FAILED:
        lines.append(f"{PREFIX} stopped the other ranks: {', '.join(map(str, stopped))}")
    lines.append(f"{PREFIX} exit code {result.exit_code}")
    return lines


def _first_failure(f: RankExit, result: JobResult, python: str) -> list[str]:
    """Return the lines on the rank that failed first (``f``): how, where, and its error."""
    pid = f"pid {f.pid}" if f.pid is not None else "pid unknown"
    lines = [f"{PREFIX} rank {f.rank} failed first: {f.describe()} (host {f.host}, {pid})"]
    if not f.local and f.pid is None:
        from .remote import explain_ssh_failure

        reason = explain_ssh_failure(f.host, f.code, f.stderr_tail, python)
        if reason:
            lines.append(f"{PREFIX} {reason}")
    tail = f.stderr_tail[-_REPORT_LINES:]
    errors = _ringcomm_errors(result)
    if f.rank in {r for rs in errors.values() for r in rs}:
        # Its traceback was shown live; the error once, with every rank that had it,
        # says more than the same traceback again (the --output-dir logs keep it whole).
        for text, ranks in errors.items():
            who = "rank" if len(ranks) == 1 else "ranks"
            lines.append(f"{PREFIX} {who} {', '.join(map(str, ranks))}: {text}")
    elif tail:
        lines.append(f"{PREFIX} last {len(tail)} lines of rank {f.rank}'s stderr:")
        lines.extend(f"  | {t}" for t in tail)
    else:
        lines.append(f"{PREFIX} rank {f.rank} wrote nothing to stderr")
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


