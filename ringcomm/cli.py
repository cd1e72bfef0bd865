"""The ``ringcomm`` command: ``launch``, ``check``, ``config`` and ``bench``."""

from __future__ import annotations

import importlib
import sys

__all__ = ["main"]

_USAGE = """\
usage: ringcomm COMMAND [ARGS...]

commands:
  launch   start a program on one machine or many (ringcomm launch -h)
  check    check hosts before a multi-host launch
  config   write a hostfile for your machines
  bench    measure collective bandwidth and latency

'ringcomm COMMAND -h' shows a command's options."""

# command -> (module, function); each function takes argv and returns the exit code
_COMMANDS = {
    "launch": ("ringcomm.launch.cli", "main"),
    "check": ("ringcomm.hosts.cli", "check_main"),
    "config": ("ringcomm.hosts.cli", "config_main"),
    "bench": ("ringcomm.bench", "main"),
}


def main(argv: list[str] | None = None) -> int:
    """Run the ``ringcomm`` command line; return the exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(_USAGE, file=sys.stdout if args else sys.stderr)
        return 0 if args else 2
    if args[0] == "--version":
        from importlib.metadata import PackageNotFoundError, version

        try:
            print(version("ringcomm"))
        except PackageNotFoundError:
            print("ringcomm (not installed)")
        return 0
    name, rest = args[0], args[1:]
    entry = _COMMANDS.get(name)
    if entry is None:
        print(f"ringcomm: unknown command {name!r}; expected one of "
              f"{', '.join(_COMMANDS)}\n\n{_USAGE}", file=sys.stderr)
        return 2
    module_name, function = entry
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        print(f"ringcomm: the {name!r} command is unavailable: cannot import "
              f"{module_name} ({e}); reinstall ringcomm", file=sys.stderr)
        return 2
    if name == "launch":
        return int(module.main(rest, prog="ringcomm launch"))
    return int(getattr(module, function)(rest))


if __name__ == "__main__":
    raise SystemExit(main())
