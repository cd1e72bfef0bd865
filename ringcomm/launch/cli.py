"""The ``ringcomm launch`` command line: argparse only, then ``launch(config)``."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path

from .. import backends
from ..hosts.hostfile import HostfileError, parse_env_assignment
from .options import LaunchConfig, LaunchError

__all__ = ["build_parser", "config_from_args", "main", "split_argv"]

_EPILOG = """\
examples:
  ringcomm launch -n 4 script.py --lr 0.1
  ringcomm launch -n 2 -m package.module
  ringcomm launch --hosts 10.0.0.1,10.0.0.2 -n 2 script.py
  ringcomm launch --hostfile hosts.json --backend mpi script.py
  ringcomm launch -n 2 --max-restarts 2 train.py   # restart the job after a failure

A hostfile is MLX's JSON: [{"ssh": "host1", "ips": ["10.0.0.1"]}, ...] or
{"backend": "ring", "envs": ["K=V"], "hosts": [...]}; each entry is one rank
(-n repeats it). A bare "python" runs with this interpreter (--python), which
must exist at the same path on every host. Every rank gets RINGCOMM_RANK,
RINGCOMM_HOSTFILE, RINGCOMM_TOKEN (and MLX_RANK, MLX_HOSTFILE). The exit code
is the first failed rank's (128+N for signal N), 124 on --timeout, 130 on
Ctrl-C; nothing outlives the launcher. More: docs/launching.md in the ringcomm
source tree."""


def _version() -> str:
    from .. import __version__

    return __version__


def _int_at_least(minimum: int, what: str) -> Callable[[str], int]:
    """Return an argparse type for whole numbers >= `minimum`, named `what` in errors."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = minimum - 1
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value
    return parse


_positive_int = _int_at_least(1, "a positive integer")
_non_negative_int = _int_at_least(0, "a whole number >= 0")


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 0 < value < 65536:
        raise argparse.ArgumentTypeError(f"expected a port in 1..65535, got {text!r}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected seconds > 0, got {text!r}")
    return value


def _env(text: str) -> tuple[str, str]:
    try:
        return parse_env_assignment(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def build_parser(prog: str = "ringcomm launch") -> argparse.ArgumentParser:
    """Return the argument parser of ``ringcomm launch`` (options only, not the program)."""
    p = argparse.ArgumentParser(
        prog=prog, usage=f"{prog} [options] [--] PROGRAM [ARGS...] | -m MODULE [ARGS...]",
        description="Launch a ringcomm (or MLX) program on one machine or many.",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--hosts",
                   help="comma-separated hosts (ips or names); default 127.0.0.1")
    p.add_argument("-n", "--repeat-hosts", type=_positive_int, default=1, metavar="N",
                   help="ranks per host (with one host: the number of ranks)")
    p.add_argument("--hostfile", type=Path, help="MLX JSON hostfile with 'ssh' and 'ips'")
    p.add_argument("--backend", choices=backends.names(),
                   help="backend for the ranks; default: the hostfile's, else ring")
    p.add_argument("--env", action="append", type=_env, default=[], metavar="K=V",
                   help="set an environment variable in every rank (repeatable)")
    p.add_argument("--cwd", help="working directory of every rank")
    p.add_argument("--python", help="python executable for ranks; default this one")
    p.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    p.add_argument("--print-python", action="store_true",
                   help="print the python executable path and exit")
    p.add_argument("-p", "--starting-port", type=_port, metavar="PORT",
                   help="first ring port (one per rank, ip and connection); default: free ports")
    p.add_argument("--connections-per-ip", type=_positive_int, default=1, metavar="N",
                   help="ring connections per ip (default 1)")
    p.add_argument("--mpi-arg", action="append", default=[], metavar="ARGS",
                   help="extra mpirun arguments, split like a shell (repeatable)")
    p.add_argument("--verbose", action="store_true",
                   help="print the plan before starting, and the ringcomm log of every rank "
                        "(RINGCOMM_LOG_LEVEL=DEBUG)")
    p.add_argument("--trace", type=Path, metavar="DIR",
                   help="write a timeline per rank to DIR and merge the local ones into "
                        "DIR/trace.json (open it in ui.perfetto.dev)")
    p.add_argument("--max-restarts", type=_non_negative_int, default=0, metavar="N",
                   help="restart the whole job after a rank fails, up to N times; each attempt "
                        "sees RINGCOMM_RESTART=0,1,... (default 0)")
    p.add_argument("--launcher", choices=("ssh", "srun"),
                   help="how ranks start: ssh (and local processes), or srun inside a Slurm "
                        "allocation (default: srun when SLURM_JOB_ID is set and no --hosts or "
                        "--hostfile is given, else ssh)")
    p.add_argument("--tag-output", action="store_true", help="prefix output lines with [rank]")
    p.add_argument("--output-dir", type=Path, metavar="DIR",
                   help="also write rank<r>.stdout / rank<r>.stderr files here")
    p.add_argument("--timeout", type=_seconds, metavar="SECONDS",
                   help="stop the whole job after this many seconds (exit 124)")
    p.add_argument("--dry-run", action="store_true",
                   help="print each rank's command and environment; start nothing")
    p.add_argument("--check", action="store_true", help="run 'ringcomm check' first")
    p.add_argument("--no-stdin", action="store_true",
                   help="do not forward this process's stdin to the ranks")
    return p


def split_argv(parser: argparse.ArgumentParser, argv: list[str]) -> tuple[list[str], list[str]]:
    """Split ``argv`` into launcher options and the program, at ``--``, ``-m`` or a program."""
    takes_value = {}
    for action in parser._actions:
        for opt in action.option_strings:
            takes_value[opt] = action.nargs != 0
    i = 0
    while i < len(argv):
        tok = argv[i]
        if tok == "--":
            return argv[:i], argv[i + 1:]
        if tok == "-m":
            return argv[:i], argv[i:]
        if not tok.startswith("-") or tok == "-":
            return argv[:i], argv[i:]
        name = tok.split("=", 1)[0]
        if name in takes_value:
            if takes_value[name] and "=" not in tok:
                i += 1
        elif len(tok) > 2 and tok[:2] in takes_value and not tok.startswith("--"):
            pass  # short option with its value attached, like -n4
        else:
            return argv[:i + 1], argv[i + 1:]  # unknown option: let argparse report it
        i += 1
    return argv, []


def config_from_args(args: argparse.Namespace, command: list[str]) -> LaunchConfig:
    """Return the LaunchConfig for parsed arguments and the program command."""
    return LaunchConfig(
        command=command,
        hosts=tuple((args.hosts or "127.0.0.1").split(",")),
        repeat_hosts=args.repeat_hosts,
        hostfile=args.hostfile,
        backend=args.backend,
        env=tuple(args.env),
        cwd=args.cwd,
        python=args.python,
        starting_port=args.starting_port,
        connections_per_ip=args.connections_per_ip,
        mpi_args=tuple(args.mpi_arg),
        verbose=args.verbose,
        tag_output=args.tag_output,
        output_dir=args.output_dir,
        timeout=args.timeout,
        dry_run=args.dry_run,
        check=args.check,
        forward_stdin=not args.no_stdin,
        trace=args.trace,
        max_restarts=args.max_restarts,
        launcher=args.launcher or _default_launcher(args),
    )


def _default_launcher(args: argparse.Namespace) -> str:
    """Return srun inside a Slurm allocation when no hosts were named, else ssh."""
    inside = bool(os.environ.get("SLURM_JOB_ID")) and args.hosts is None and args.hostfile is None
    return "srun" if inside else "ssh"


def main(argv: list[str] | None = None, prog: str = "ringcomm launch") -> int:
    """Run ``ringcomm launch``; return the exit code."""
    from .api import launch

    parser = build_parser(prog)
    argv = list(sys.argv[1:] if argv is None else argv)
    options, command = split_argv(parser, argv)
    args = parser.parse_args(options)
    if args.print_python:
        print(args.python or sys.executable)
        return 0
    if not command:
        parser.error("no program given; expected e.g. 'ringcomm launch -n 2 script.py'")
    if args.hostfile is not None and args.hosts is not None:
        parser.error("give either --hosts or --hostfile, not both")
    try:
        config = config_from_args(args, command)
        return launch(config)
    except (LaunchError, HostfileError) as e:
        print(f"ringcomm launch: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"ringcomm launch: error: {e}", file=sys.stderr)
        return 1
