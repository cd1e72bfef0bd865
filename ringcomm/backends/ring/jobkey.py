"""The job's key: the secret every connection of the job proves, whatever started the ranks.

In order:

1. ``RINGCOMM_TOKEN``: set by ``ringcomm launch`` (a fresh secret per job), or by
   the user for any engine (``export RINGCOMM_TOKEN=$(openssl rand -hex 16)``).
2. The job's key file: rank 0 makes a random key and writes it, mode 0600, into
   a directory only this user can enter (``RINGCOMM_KEY_DIR``, default
   ``~/.ringcomm/keys``); every other rank reads it there. On one host (torchrun
   on a workstation) that always works; across hosts it works where the
   directory is shared (a home directory on NFS, as on most Slurm clusters),
   and otherwise a rank says so and how to set a token instead. The file's name
   comes from the job's identity (rendezvous address and job id, or the rank
   hostfile), so two jobs never read each other's; a file left by an earlier run
   of the same identity is told apart because rank 0 refuses its key, and the
   rank reads again. Rank 0 removes the file once every rank has it.
3. ``RINGCOMM_UNAUTHENTICATED=1``: no secret; the key is derived from what the
   job's variables say, which anyone who can list the hosts' ports or the
   scheduler's queue can derive too. Anyone who reaches the ports can join the
   job. Object calls then refuse to unpickle unless
   ``RINGCOMM_UNAUTHENTICATED_PICKLE=1`` says that running code sent by such a
   stranger is acceptable.

Without any of the three, `init` fails with an error that says how to set one.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import stat
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from ... import environment
from ...errors import ConnectError, InitError, RingcommError
from ...transport import handshake
from ...transport.net import Address, connect

__all__ = ["JobKey", "KeyFile", "from_environment", "probe"]

log = logging.getLogger("ringcomm")

DEFAULT_DIR = os.path.join("~", ".ringcomm", "keys")
KEY_BYTES = 32
# A rank that has waited this long for rank 0's key file says why it waits, once.
WAIT_NOTICE_SECONDS = 10.0


@dataclass(frozen=True)
class JobKey:
    """The secret of a job and where it came from."""

    secret: bytes
    source: str
    authenticated: bool  # False: derived from public facts (RINGCOMM_UNAUTHENTICATED)


def _how_to_fix(what: str) -> str:
    return (f"{what}. Give every rank the same secret (export {environment.TOKEN}=$(openssl "
            f"rand -hex 16) where the job starts; `ringcomm launch` does this itself), or share "
            f"{environment.KEY_DIR}'s directory between the hosts; on a cluster you trust "
            f"completely, {environment.UNAUTHENTICATED}=1 runs the job without a secret")


class KeyFile:
    """Rank 0's key file of one job, in a directory only this user can enter."""

    def __init__(self, environ: Mapping[str, str], identity: bytes) -> None:
        self.directory = os.path.expanduser(environ.get(environment.KEY_DIR) or DEFAULT_DIR)
        name = hashlib.sha256(b"ringcomm-job:" + identity).hexdigest()[:32]
        self.path = os.path.join(self.directory, f"{name}.key")

    def _private_directory(self, create: bool) -> None:
        """Make sure the directory is ours alone (0700, ours, not a link); raise InitError."""
        if create:
            try:
                os.makedirs(self.directory, mode=0o700, exist_ok=True)
            except OSError as e:
                raise InitError(_how_to_fix(f"cannot create the key directory "
                                            f"{self.directory!r}: {e.strerror}")) from None
        try:
            st = os.lstat(self.directory)
        except FileNotFoundError:
            return
        except OSError as e:
            raise InitError(_how_to_fix(f"cannot read the key directory {self.directory!r}: "
                                        f"{e.strerror}")) from None
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
            raise InitError(_how_to_fix(f"the key directory {self.directory!r} is not a "
                                        "directory of this user"))
        if st.st_mode & 0o077:
            if not create:
                raise InitError(_how_to_fix(f"the key directory {self.directory!r} is open to "
                                            f"other users (mode {st.st_mode & 0o777:o})"))
            os.chmod(self.directory, 0o700)

    def publish(self) -> bytes:
        """Write a fresh key (rank 0) and return it."""
        self._private_directory(create=True)
        secret = os.urandom(KEY_BYTES)
        partial = f"{self.path}.{os.getpid()}.partial"
        try:
            fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            try:
                os.write(fd, secret.hex().encode())
            finally:
                os.close(fd)
            os.replace(partial, self.path)
        except OSError as e:
            try:
                os.unlink(partial)
            except OSError:
                pass
            raise InitError(_how_to_fix(f"rank 0 cannot write the job's key file "
                                        f"{self.path!r}: {e.strerror}")) from None
        return secret

    def read(self) -> bytes | None:
        """Return the key in the file, or None while there is none; raise InitError when the
        file is not this user's alone."""
        self._private_directory(create=False)
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            return None
        except OSError as e:
            raise InitError(_how_to_fix(f"cannot read the job's key file {self.path!r}: "
                                        f"{e.strerror}")) from None
        try:
            st = os.fstat(fd)
            if st.st_uid != os.getuid() or st.st_mode & 0o077:
                raise InitError(_how_to_fix(f"the job's key file {self.path!r} is not this "
                                            f"user's alone (mode {st.st_mode & 0o777:o})"))
            text = os.read(fd, 4 * KEY_BYTES)
        finally:
            os.close(fd)
        try:
            secret = bytes.fromhex(text.decode())
        except ValueError:
            return None  # a partial write cannot be seen (rename), so: another format; wait
        return secret if len(secret) == KEY_BYTES else None

    def wait(self, rank: int, deadline: float, stale: bytes | None = None) -> bytes:
        """Return the key rank 0 wrote (other than `stale`), waiting until `deadline`."""
        start, told, delay = time.monotonic(), False, 0.01
        while True:
            secret = self.read()
            if secret is not None and secret != stale:
                return secret
            now = time.monotonic()
            if now >= deadline:
                what = "a new key" if stale is not None else "no key"
                raise InitError(_how_to_fix(
                    f"rank {rank}: rank 0 wrote {what} to {self.path!r} within "
                    f"{now - start:.0f} s: is rank 0 running, and does it see this directory "
                    "(on another host it must be shared)?"))
            if not told and now - start >= WAIT_NOTICE_SECONDS:
                told = True
                log.warning("ringcomm rank %d: waiting for the job's key, which rank 0 writes "
                            "to %s; where rank 0 runs on another host that directory must be "
                            "shared, or set %s on every rank", rank, self.path,
                            environment.TOKEN)
            time.sleep(min(delay, max(0.0, deadline - now)))
            delay = min(delay * 2, 0.25)

    def remove(self) -> None:
        try:
            os.unlink(self.path)
        except OSError as e:
            if e.errno != errno.ENOENT:
                log.debug("could not remove the job's key file %s: %s", self.path, e)


def from_environment(environ: Mapping[str, str], rank: int, identity: bytes, source: str,
                     deadline: float, accepted: Callable[[bytes], bool]
                     ) -> tuple[JobKey, KeyFile | None]:
    """Return the job's key (and rank 0's key file to remove once every rank has it).

    `identity` names the job (the same on every rank); `source` says in words what it is;
    `accepted(secret)` asks rank 0 whether a key read from its file is the one it holds
    (False: a file an earlier run left, read before rank 0 replaced it).
    """
    token = environ.get(environment.TOKEN)
    if token:
        return JobKey(token.encode(), environment.TOKEN, True), None
    if environment.unauthenticated(environ):
        if rank == 0:
            log.warning("ringcomm: %s=1: the job runs without a secret; its key is derived from "
                        "%s, which others can learn, so anyone who reaches its ports can join "
                        "it. Traffic is not encrypted either way.", environment.UNAUTHENTICATED,
                        source)
        return JobKey(hashlib.sha256(b"ringcomm-open:" + identity).digest(),
                      f"derived from {source} ({environment.UNAUTHENTICATED}=1)", False), None
    keys = KeyFile(environ, identity)
    if rank == 0:
        return JobKey(keys.publish(), f"the key file {keys.path}", True), keys
    secret = keys.wait(rank, deadline)
    while not accepted(secret):
        secret = keys.wait(rank, deadline, stale=secret)
    return JobKey(secret, f"the key file {keys.path}", True), None


def probe(addr: Address, secret: bytes, rank: int, deadline: float, what: str) -> bool:
    """Return whether the listener at `addr` holds `secret` (one handshake, as a query).

    Waits until the listener is up or `deadline`; raises InitError when it never answers.
    """
    try:
        s = connect(addr, deadline, what=what)
    except ConnectError as e:
        raise InitError(f"rank {rank}: {e}; is rank 0 running, and reachable from this host?") \
            from None
    with s:
        try:
            handshake.client(s, secret, handshake.Hello(handshake.Kind.QUERY, rank, 0), deadline)
        except handshake.HandshakeError:
            return False
        except RingcommError as e:
            raise InitError(f"rank {rank}: {what} at {addr}: {e}") from None
    return True
