"""Run one rank and kill its whole process group when the launcher goes away.

Why a guard process: a rank runs in its own session, so no terminal signal
and no death of the launcher reaches it. ``PR_SET_PDEATHSIG`` only exists on
Linux and only covers the direct child, and a pidfile plus a second ssh to
kill it has no deadline. Instead every rank has this small guard between it
and the launcher. The guard's stdin is a pipe from the launcher (locally) or
the ssh channel (remotely); when it reaches EOF -- the launcher exited, was
killed with ``kill -9``, or the ssh connection dropped -- the guard sends
SIGTERM to the rank's process group, waits ``grace`` seconds, then SIGKILL.
That works the same on Linux, macOS and across ssh.

This file is executed, not imported: the launcher starts
``python -c BOOTSTRAP`` and writes this source on the guard's stdin first, so
nothing needs to be installed on a remote host but Python. It must only use
the standard library.

Protocol on stdin, after the source: frames of one type byte, a 4-byte
big-endian length and a payload. ``S`` (first frame): JSON with ``argv``,
``env``, ``cwd`` (or ``cwd_fallback``, used when it exists), ``hostfile`` (text to
write to a private temp file whose path goes into ``hostfile_vars``) and ``grace``.
``D``: data for the rank's stdin. ``E``: close the rank's stdin. ``T``: terminate the rank. EOF: terminate.

The guard reports on its stderr with lines starting with ``MARK``: the rank's
pid once started, and its exit status at the end. It exits with the rank's
exit code, or 128+N when the rank died on signal N.
"""

import json
import os
import queue
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time

MARK = b"\x00ringcomm-guard "


class _Stop(Exception):
    """A signal asked the guard to stop the rank."""


def _mark(text):
    try:
        os.write(2, MARK + text.encode() + b"\n")
    except OSError:
        pass


def _read_exact(stream, n):
    data = stream.read(n)
    if data is None or len(data) < n:
        return None
    return data


def _read_frame(stream):
    head = _read_exact(stream, 5)
    if head is None:
        return None, None
    kind, size = head[:1], struct.unpack(">I", head[1:])[0]
    body = _read_exact(stream, size) if size else b""
    if body is None:
        return None, None
    return kind, body


def _group_alive(pgid):
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _signal_group(pgid, sig):
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


class Guard:
    """Own one rank process: feed its stdin, stop it, report how it ended."""

    def __init__(self, spec):
        self.spec = spec
        self.grace = float(spec.get("grace", 3.0))
        self.proc = None
        self.exited = threading.Event()
        self.stdin_queue = queue.SimpleQueue()
        self.hostfile_path = None

    def start(self):
        env = dict(os.environ)
        env.update(self.spec.get("env") or {})
        text = self.spec.get("hostfile")
        if text is not None:
            fd, self.hostfile_path = tempfile.mkstemp(prefix="ringcomm-hosts-", suffix=".json")
            with os.fdopen(fd, "w") as f:
                f.write(text)
            for name in self.spec.get("hostfile_vars") or ():
                env[name] = self.hostfile_path
        cwd = self.spec.get("cwd")
        fallback = self.spec.get("cwd_fallback")
        if cwd is None and fallback and os.path.isdir(fallback):
            cwd = fallback
        argv = self.spec["argv"]
        preexec = _pdeathsig_preexec()
        try:
            self.proc = subprocess.Popen(
                argv, env=env, cwd=cwd, stdin=subprocess.PIPE,
                # The guard has no other thread yet, so preexec_fn is safe here.
                start_new_session=True, preexec_fn=preexec,
            )
        except FileNotFoundError as e:
            missing = cwd if cwd and not os.path.isdir(cwd) else argv[0]
            what = "directory" if missing == cwd else "program"
            sys.stderr.write(f"ringcomm: cannot start rank: no such {what} {missing!r} "
                             f"on this host ({e.strerror})\n")
            self._finish(127)
        except OSError as e:
            sys.stderr.write(f"ringcomm: cannot start rank {argv[0]!r}: {e.strerror}\n")
            self._finish(126)
        _mark(f"pid={self.proc.pid}")
        threading.Thread(target=self._write_stdin, daemon=True).start()
        threading.Thread(target=self._wait, daemon=True).start()

    def _write_stdin(self):
        pipe = self.proc.stdin
        while True:
            data = self.stdin_queue.get()
            try:
                if data is None:
                    pipe.close()
                    return
                pipe.write(data)
                pipe.flush()
            except (BrokenPipeError, ValueError, OSError):
                return

    def _wait(self):
        code = self.proc.wait()
        self.exited.set()
        # Leftover members of the rank's group (its children) end with it.
        pgid = self.proc.pid
        if _group_alive(pgid):
            _signal_group(pgid, signal.SIGTERM)
            end = time.monotonic() + min(self.grace, 1.0)
            while _group_alive(pgid) and time.monotonic() < end:
                time.sleep(0.05)
            _signal_group(pgid, signal.SIGKILL)
        if code < 0:
            _mark(f"signal={-code}")
            self._finish(128 - code)
        _mark(f"exit={code}")
        self._finish(code)

    def _finish(self, code):
        if self.hostfile_path:
            try:
                os.unlink(self.hostfile_path)
            except OSError:
                pass
        try:
            sys.stderr.flush()
        except (OSError, ValueError):
            pass
        os._exit(code)

    def terminate(self):
        """SIGTERM the rank's group, SIGKILL it after the grace period."""
        for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
            signal.signal(sig, signal.SIG_IGN)
        if self.proc is None:
            self._finish(128 + signal.SIGTERM)
        pgid = self.proc.pid
        _signal_group(pgid, signal.SIGTERM)
        if not self.exited.wait(self.grace):
            _signal_group(pgid, signal.SIGKILL)
        # The waiter thread reports how the rank ended and exits the guard;
        # this thread only steps in if that does not happen within the deadline.
        threading.Event().wait(self.grace + 5.0)
        self._finish(128 + signal.SIGKILL)

    def serve(self, stream):
        """Read launcher frames until EOF or ``T``, then stop the rank."""
        try:
            while True:
                kind, body = _read_frame(stream)
                if kind is None or kind == b"T":
                    break
                if kind == b"D":
                    self.stdin_queue.put(body)
                elif kind == b"E":
                    self.stdin_queue.put(None)
        except _Stop:
            pass
        self.terminate()


def _pdeathsig_preexec():
    """Return a preexec function that sets PR_SET_PDEATHSIG on Linux, else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None

    def preexec():
        prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG: belt and braces

    return preexec


def _on_signal(signum, frame):
    raise _Stop()


def main():
    """Read the start frame, run the rank, and serve the launcher's frames."""
    stream = sys.stdin.buffer
    kind, body = _read_frame(stream)
    if kind != b"S":
        sys.stderr.write("ringcomm: guard got no start frame from the launcher\n")
        os._exit(2)
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(sig, _on_signal)
    guard = Guard(json.loads(body))
    try:
        guard.start()
    except _Stop:
        guard.terminate()
    guard.serve(stream)


if __name__ == "__main__":
    main()
