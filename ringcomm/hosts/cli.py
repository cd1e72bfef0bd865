"""The command lines of ``ringcomm check`` and ``ringcomm config``: argparse, printing, exit codes.

The work is in `preflight.py` (`run_checks`) and `discovery.py`
(`configure`), which raise; only this module prints usage or chooses an
exit code.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .. import __version__, backends
from . import ssh
from .discovery import ConfigError, configure, hostfile_json, to_dot
from .hostfile import HostEntry, HostfileError, load_hostfile, parse_env_assignment
from .preflight import format_report, run_checks

__all__ = ["check_main", "config_main"]


def _check_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ringcomm check",
        description="Check that a job can run on these hosts: ssh, python, ringcomm, the "
                    "program, mpirun, and ring ports reachable between neighbours.")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--hosts", help="comma-separated hosts (default: 127.0.0.1)")
    src.add_argument("--hostfile", help="MLX hostfile JSON")
    p.add_argument("-n", "--repeat-hosts", type=int, default=1, metavar="N",
                   help="ranks per host (default: 1)")
    p.add_argument("--backend", choices=backends.names(), help="default: the hostfile's, else ring")
    p.add_argument("--python", help="python on the hosts (default: this one's path)")
    p.add_argument("--cwd", help="directory the job runs in (default: the current one)")
    p.add_argument("-p", "--starting-port", type=int, help="rank r listens on PORT+r "
                   "(default: any free port)")
    p.add_argument("--connect-timeout", type=float, default=ssh.DEFAULT_CONNECT_TIMEOUT,
                   help="seconds for each ssh or TCP connection (default: %(default)s)")
    p.add_argument("--timeout", type=float, default=20.0,
                   help="seconds for each probe to run (default: %(default)s)")
    p.add_argument("program", nargs="?", help="the script the job will run")
    p.add_argument("args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    return p


def check_main(argv: Sequence[str] | None = None) -> int:
    """Run ``ringcomm check``; return 0 when every check passes, else 1."""
    parser = _check_parser()
    args = parser.parse_args(argv)
    backend = args.backend
    try:
        if args.hostfile:
            hf = load_hostfile(args.hostfile)
            hosts = list(hf.hosts)
            backend = backend or hf.backend
        else:
            names = [h.strip() for h in (args.hosts or "127.0.0.1").split(",") if h.strip()]
            hosts = [HostEntry(ssh=h) for h in names]
        report = run_checks(hosts, repeat=args.repeat_hosts, program=args.program,
                            python=args.python, backend=backend or "ring",
                            starting_port=args.starting_port, cwd=args.cwd,
                            connect_timeout=args.connect_timeout, timeout=args.timeout)
    except (HostfileError, ValueError) as e:
        parser.error(str(e))
    print(format_report(report), flush=True)
    return 0 if report.ok else 1


_THUNDERBOLT = ("--over thunderbolt is MLX's Mac-only mode (Thunderbolt RDMA), which ringcomm "
                "does not have; use --over ethernet, and for a Thunderbolt bridge with an IP "
                "address add --interface bridge0")


def _config_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ringcomm config",
        description="Write a hostfile: find each host's address over ssh and check that "
                    "the hosts reach each other.")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--hosts", help="comma-separated ssh host names")
    src.add_argument("--hostfile", help="a hostfile whose 'ssh' names to use")
    p.add_argument("--over", choices=("ethernet", "thunderbolt"), default="ethernet")
    p.add_argument("--interface", help="interface to take addresses from "
                   "(default: the one of the default route)")
    p.add_argument("--backend", choices=backends.names(), default="ring")
    p.add_argument("--env", action="append", default=[], metavar="K=V",
                   help="environment for the ranks (repeatable)")
    p.add_argument("--output", help="write the hostfile here (default: print it)")
    p.add_argument("--ignore-unreachable", action="store_true",
                   help="drop hosts ssh cannot reach instead of stopping")
    p.add_argument("--dot", action="store_true", help="print the hosts and links as Graphviz DOT")
    p.add_argument("--python", help="python on the hosts for the TCP probes "
                   "(default: this one's path)")
    p.add_argument("--connect-timeout", type=float, default=ssh.DEFAULT_CONNECT_TIMEOUT)
    p.add_argument("--timeout", type=float, default=20.0)
    p.add_argument("--verbose", action="store_true", help="also list every probed link")
    return p


def config_main(argv: Sequence[str] | None = None) -> int:
    """Run ``ringcomm config``; return 0 when the hostfile was written."""
    parser = _config_parser()
    args = parser.parse_args(argv)
    if args.over == "thunderbolt":
        parser.error(_THUNDERBOLT)
    try:
        envs = [parse_env_assignment(e) for e in args.env]
        hosts = ([h.ssh for h in load_hostfile(args.hostfile).hosts] if args.hostfile
                 else args.hosts.split(","))
    except (ValueError, HostfileError) as e:
        parser.error(str(e))

    def log(line: str) -> None:
        print(f"ringcomm config: {line}", file=sys.stderr)

    try:
        found = configure(hosts, interface=args.interface,
                          ignore_unreachable=args.ignore_unreachable, python=args.python,
                          connect_timeout=args.connect_timeout, timeout=args.timeout, log=log)
    except ConfigError as e:
        print(f"ringcomm config: error: {e}", file=sys.stderr)
        return 1
    if args.verbose:
        for link in found.links:
            log(f"{link.src_host} -> {link.dst_host} at {link.address}: {link.error or 'ok'}")
    if args.dot:
        print(to_dot(found.hosts, found.links), end="")
    problems = found.problems()
    if problems:
        print("ringcomm config: error: ring neighbours do not connect:\n  "
              + "\n  ".join(problems), file=sys.stderr)
        return 1
    text = hostfile_json(found.hosts, args.backend, envs)
    if args.output:
        with open(args.output, "w") as f:
            f.write(text)
        log(f"wrote {args.output} ({len(found.hosts)} hosts)")
    elif not args.dot:
        print(text, end="")
    return 0
