"""Small python programs that ``ringcomm check`` runs on each host.

They use only the standard library, print one tagged JSON line, and end on
their own: the listener when its stdin closes or its alarm fires, so nothing
outlives a check even when the ssh connection to it is cut.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["CONNECT", "ENV", "LISTEN", "ProbeParseError", "parse_tagged"]

# argv: [script]. Reports the interpreter, ringcomm's version, the script and mpirun.
ENV = r"""
import json, os, shutil, sys
out = {"python": sys.executable, "version": None, "file": None, "error": None,
       "script": None, "mpirun": None}
try:
    import ringcomm
    out["version"] = str(getattr(ringcomm, "__version__", "unknown"))
    out["file"] = getattr(ringcomm, "__file__", None)
except Exception as e:
    out["error"] = "%s: %s" % (type(e).__name__, e)
if sys.argv[1:] and sys.argv[1]:
    out["script"] = os.path.isfile(sys.argv[1])
out["mpirun"] = (shutil.which("mpirun")
                 or shutil.which("mpirun", path=os.path.dirname(sys.executable)))
print("RINGCOMM-ENV " + json.dumps(out), flush=True)
"""

# argv: [seconds, "ip:port", ...]. Binds each address (port 0: any), answers b"k" to
# every connection, and exits when stdin closes or after `seconds`.
LISTEN = r"""
import errno, json, signal, socket, sys, threading
signal.alarm(int(float(sys.argv[1])) + 1)
res, socks = [], []
for spec in sys.argv[2:]:
    ip, _, port = spec.rpartition(":")
    ip = ip.strip("[]")
    s = socket.socket(socket.AF_INET6 if ":" in ip else socket.AF_INET)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind((ip, int(port)))
        s.listen(64)
    except OSError as e:
        s.close()
        res.append({"spec": spec, "port": None,
                    "error": "%s: %s" % (errno.errorcode.get(e.errno, e.errno), e.strerror)})
        continue
    socks.append(s)
    res.append({"spec": spec, "port": s.getsockname()[1], "error": None})
def serve(s):
    while True:
        try:
            c, _ = s.accept()
        except OSError:
            return
        try:
            c.sendall(b"k")
        except OSError:
            pass
        c.close()
for s in socks:
    threading.Thread(target=serve, args=(s,), daemon=True).start()
print("RINGCOMM-LISTEN " + json.dumps(res), flush=True)
sys.stdin.read()
"""

# argv: [seconds, "ip:port", ...]. Connects to each address in parallel and expects b"k".
CONNECT = r"""
import errno, json, socket, sys, threading
timeout = float(sys.argv[1])
specs = sys.argv[2:]
res = [None] * len(specs)
def probe(i, spec):
    ip, _, port = spec.rpartition(":")
    try:
        c = socket.create_connection((ip.strip("[]"), int(port)), timeout=timeout)
        c.settimeout(timeout)
        got = c.recv(1)
        c.close()
        res[i] = None if got == b"k" else "connected but the peer did not answer as a probe"
    except socket.timeout:
        res[i] = "ETIMEDOUT: timed out after %gs" % timeout
    except OSError as e:
        res[i] = "%s: %s" % (errno.errorcode.get(e.errno, e.errno), e.strerror)
threads = [threading.Thread(target=probe, args=(i, s), daemon=True) for i, s in enumerate(specs)]
for t in threads:
    t.start()
for t in threads:
    t.join(timeout + 1)
out = [{"spec": s, "error": "ETIMEDOUT: no answer" if t.is_alive() else e}
       for s, e, t in zip(specs, res, threads)]
print("RINGCOMM-CONNECT " + json.dumps(out), flush=True)
"""


class ProbeParseError(ValueError):
    """A probe's output did not contain its tagged line."""


def parse_tagged(output: str, tag: str) -> Any:
    """Return the JSON after ``RINGCOMM-<tag> `` in ``output``; raise when absent."""
    prefix = f"RINGCOMM-{tag} "
    for line in output.splitlines():
        if line.startswith(prefix):
            return json.loads(line[len(prefix):])
    raise ProbeParseError(f"expected a line starting with {prefix.strip()!r}, got {output[-200:]!r}")
