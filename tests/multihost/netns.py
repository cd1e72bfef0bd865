"""Build throwaway ssh hosts on this machine with network namespaces.

Each host is a network namespace joined to a bridge in the root namespace by
a veth pair, with its own address on a private test subnet (10.77.N.0/24, N
chosen free per run) and its own ``sshd``. The hosts share this machine's
filesystem, so the same python and script paths exist "remotely", except one
directory: ``Cluster.private_path`` is bind-mounted per host (inside the mount
namespace of that host's sshd) from ``Host.private_dir``, so a test can make a
file present on some hosts and missing on others.

``ssh`` finds the test keys through a wrapper script in ``Cluster.bin_dir``
that runs the system ssh with ``-F <config>``: put that directory first on
PATH and plain ``ssh 10.77.N.11 cmd`` works as in a user's setup (OpenSSH
reads ``~/.ssh/config`` from the passwd entry, not from ``$HOME``, so a
temporary HOME would not be seen).

Names include the pid of the building process so parallel runs never clash;
names of dead runs are cleaned up by the next build.

This module uses the standard library only and imports nothing of the tests,
so that benchmarks/multihost.py can import it outside the test suite.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from ringcomm.transport.shm import alive  # a zombie awaiting its reaper counts as gone

__all__ = ["Cluster", "Host", "build", "cleanup_stale", "skip_reason", "teardown"]

SSHD = "/usr/sbin/sshd"
SSH = "/usr/bin/ssh"
PREFIX = "rcmh"
LOCK_PATH = "/tmp/ringcomm-netns.lock"
_STEP_TIMEOUT = 20.0
_NAME_RE = re.compile(rf"^{PREFIX}(\d+)[a-z]-h\d+$")


@dataclass(frozen=True)
class Host:
    """One test host: a namespace, its address and its private directory."""

    index: int
    netns: str
    veth: str
    ip: str
    private_dir: Path

    @property
    def hostname(self) -> str:
        """Return the host's own hostname (its sshd and sessions run in a UTS namespace)."""
        return f"{PREFIX}-h{self.index}"


@dataclass
class Cluster:
    """The test hosts of one run and everything needed to reach and remove them."""

    hosts: tuple[Host, ...]
    bridge: str
    bridge_ip: str
    unreachable_ip: str
    workdir: Path
    private_path: Path
    bin_dir: Path
    ssh_config: Path
    sshd: dict[str, subprocess.Popen] = field(default_factory=dict)

    @property
    def ips(self) -> list[str]:
        """Return the host addresses in order."""
        return [h.ip for h in self.hosts]

    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """Return an environment whose ``ssh`` uses the test keys."""
        env = dict(os.environ if base is None else base)
        env["PATH"] = f"{self.bin_dir}{os.pathsep}{env.get('PATH', '')}"
        return env

    def ssh(self, host: Host, argv: list[str], timeout: float = _STEP_TIMEOUT
            ) -> subprocess.CompletedProcess:
        """Run ``argv`` on ``host`` over ssh and capture its output."""
        cmd = [str(self.bin_dir / "ssh"), host.ip, shlex.join(argv)]
        return _run(cmd, timeout=timeout, check=False)

    def netns_exec(self, host: Host, argv: list[str], timeout: float = _STEP_TIMEOUT
                   ) -> subprocess.CompletedProcess:
        """Run ``argv`` in ``host``'s network namespace without ssh."""
        return _run(["ip", "netns", "exec", host.netns, *argv], timeout=timeout, check=False)

    def wait_no_strays(self, timeout: float = 5.0) -> dict[str, list[int]]:
        """Wait until only the sshd listeners run in the hosts; return the strays left.

        For callers outside the test suite (benchmarks/multihost.py imports this module on
        its own); tests prove "nothing survives" with ``tests.harness.assert_none_survive``
        fed by :meth:`strays`.
        """
        deadline = time.monotonic() + timeout
        while True:
            strays = {h.ip: p for h in self.hosts if (p := self.stray_pids(h))}
            if not strays or time.monotonic() > deadline:
                return strays
            time.sleep(0.1)

    def strays(self) -> list[int]:
        """Return the pids in every host's namespace other than its listening sshd."""
        return [p for h in self.hosts for p in self.stray_pids(h)]

    def add_interface(self, host: Host, name: str, cidr: str | None = None) -> None:
        """Add an isolated interface ``name`` (a veth whose peer stays in the host) to ``host``."""
        ns = ["ip", "netns", "exec", host.netns]
        _run([*ns, "ip", "link", "add", name, "type", "veth", "peer", "name", f"{name}p"])
        _run([*ns, "ip", "link", "set", name, "up"])
        _run([*ns, "ip", "link", "set", f"{name}p", "up"])
        if cidr is not None:
            _run([*ns, "ip", "addr", "add", cidr, "dev", name])

    def del_interface(self, host: Host, name: str) -> None:
        """Remove an interface added by :meth:`add_interface`."""
        _run(["ip", "netns", "exec", host.netns, "ip", "link", "del", name], check=False)

    def pids(self, host: Host) -> list[int]:
        """Return the pids running in ``host``'s namespace, sshd included."""
        return _netns_pids(host.netns)

    def stray_pids(self, host: Host) -> list[int]:
        """Return the pids in ``host``'s namespace other than its listening sshd."""
        daemon = self.sshd.get(host.netns)
        keep = {daemon.pid} if daemon is not None else set()
        return [p for p in self.pids(host) if p not in keep]


def _run(argv: list[str], *, timeout: float = _STEP_TIMEOUT, check: bool = True
         ) -> subprocess.CompletedProcess:
    res = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                         stdin=subprocess.DEVNULL, check=False)
    if check and res.returncode != 0:
        raise RuntimeError(f"{shlex.join(argv)} exited {res.returncode}: {res.stderr.strip()}")
    return res


def skip_reason() -> str | None:
    """Return why namespace hosts cannot be built here, or None when they can."""
    if os.geteuid() != 0:
        return "multihost tests need root (ip netns, sshd)"
    for tool, hint in ((SSHD, "apt-get install openssh-server"),
                       (SSH, "apt-get install openssh-client"),
                       ("/usr/bin/ssh-keygen", "apt-get install openssh-client")):
        if not os.path.exists(tool):
            return f"{tool} missing; try: {hint}"
    if shutil.which("ip") is None or shutil.which("nsenter") is None:
        return "ip or nsenter missing; try: apt-get install iproute2 util-linux"
    probe = f"{PREFIX}{os.getpid()}-probe"
    try:
        add = _run(["ip", "netns", "add", probe], check=False)
        if add.returncode != 0:
            return f"ip netns add failed: {add.stderr.strip()}"
    finally:
        _run(["ip", "netns", "del", probe], check=False)
    return None


def _netns_pids(netns: str) -> list[int]:
    res = _run(["ip", "netns", "pids", netns], check=False)
    return [int(x) for x in res.stdout.split()] if res.returncode == 0 else []


def _kill_netns_pids(netns: str, deadline: float) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in _netns_pids(netns):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        while time.monotonic() < deadline and _netns_pids(netns):
            time.sleep(0.05)
        if not _netns_pids(netns):
            return
        deadline = time.monotonic() + 2.0


def cleanup_stale() -> list[str]:
    """Remove namespaces and bridges left by runs whose process is gone."""
    removed: list[str] = []
    listing = _run(["ip", "-j", "netns", "list"], check=False).stdout.strip()
    for entry in json.loads(listing) if listing else []:
        name = entry.get("name", "")
        m = _NAME_RE.match(name)
        if m and not alive(int(m.group(1))):
            _kill_netns_pids(name, time.monotonic() + 2.0)
            _run(["ip", "netns", "del", name], check=False)
            removed.append(name)
    links = _run(["ip", "-j", "link", "show", "type", "bridge"], check=False).stdout.strip()
    for entry in json.loads(links) if links else []:
        name = entry.get("ifname", "")
        m = re.match(rf"^{PREFIX}b(\d+)[a-z]$", name)
        if m and not alive(int(m.group(1))):
            _run(["ip", "link", "del", name], check=False)
            removed.append(name)
    return removed


def _used_subnets() -> set[int]:
    used: set[int] = set()
    out = _run(["ip", "-j", "-4", "route", "show", "table", "all"], check=False).stdout
    for route in json.loads(out) if out.strip() else []:
        m = re.match(r"^10\.77\.(\d+)\.", route.get("dst", ""))
        if m:
            used.add(int(m.group(1)))
    return used


def _free_tag() -> str:
    """Return this process's pid plus the first letter no bridge of ours uses yet."""
    # Interface names are limited to 15 characters: prefix, pid (up to 7 digits), a letter.
    links = _run(["ip", "-o", "link", "show"], check=False).stdout
    for letter in "abcdefghijklmnopqrstuvwxyz":
        tag = f"{os.getpid()}{letter}"
        if f" {PREFIX}b{tag}:" not in links:
            return tag
    raise RuntimeError("more than 26 test clusters in one process")


def _keygen(path: Path) -> None:
    _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "ringcomm-test", "-f", str(path)])


def _sshd_config(workdir: Path, ip: str) -> str:
    # Sessions get the ssh wrapper first on PATH too, so a host can ssh to the
    # others (as OpenMPI's tree spawn does) like on a cluster with shared keys.
    path = f"{workdir / 'bin'}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    return "\n".join([
        "Port 22",
        f"SetEnv PATH={path}",
        f"ListenAddress {ip}",
        f"HostKey {workdir / 'host_key'}",
        f"AuthorizedKeysFile {workdir / 'authorized_keys'}",
        "PidFile none",
        "UsePAM no",
        "StrictModes no",
        "PermitRootLogin prohibit-password",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "MaxStartups 100",
        "MaxSessions 100",
        "LogLevel ERROR",
        "",
    ])


def _ssh_config(workdir: Path) -> str:
    return "\n".join([
        "Host *",
        "  User root",
        f"  IdentityFile {workdir / 'user_key'}",
        "  IdentitiesOnly yes",
        f"  UserKnownHostsFile {workdir / 'known_hosts'}",
        "  GlobalKnownHostsFile /dev/null",
        "  StrictHostKeyChecking yes",
        "  BatchMode yes",
        "  ConnectTimeout 15",
        "  LogLevel ERROR",
        "",
    ])


def _wait_port(ip: str, port: int, deadline: float) -> None:
    while True:
        try:
            with socket.create_connection((ip, port), timeout=1.0):
                return
        except OSError as e:
            if time.monotonic() > deadline:
                raise RuntimeError(f"sshd on {ip}:{port} not reachable: {e}") from e
            time.sleep(0.1)


def build(workdir: Path, count: int = 3) -> Cluster:
    """Create ``count`` namespace hosts with sshd under ``workdir``; undo all on failure."""
    cleanup_stale()
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "bin").mkdir(exist_ok=True)
    private_path = workdir / "private"
    private_path.mkdir(exist_ok=True)
    cluster = Cluster(hosts=(), bridge="", bridge_ip="", unreachable_ip="", workdir=workdir,
                      private_path=private_path, bin_dir=workdir / "bin",
                      ssh_config=workdir / "ssh_config")
    try:
        _build(cluster, count)
    except BaseException:
        teardown(cluster)
        raise
    return cluster


def _build(cluster: Cluster, count: int) -> None:
    workdir = cluster.workdir
    _keygen(workdir / "host_key")
    _keygen(workdir / "user_key")
    shutil.copy(workdir / "user_key.pub", workdir / "authorized_keys")
    cluster.ssh_config.write_text(_ssh_config(workdir))
    wrapper = cluster.bin_dir / "ssh"
    wrapper.write_text(f'#!/bin/sh\nexec {SSH} -F {shlex.quote(str(cluster.ssh_config))} "$@"\n')
    wrapper.chmod(0o755)
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege-separation dir

    # The lock makes choosing free names and a free subnet, and claiming them by
    # creating the bridge, atomic across parallel runs.
    with open(LOCK_PATH, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        free = [n for n in range(256) if n not in _used_subnets()]
        if not free:
            raise RuntimeError("no free 10.77.N.0/24 test subnet")
        net = f"10.77.{free[0]}"
        tag = _free_tag()
        cluster.bridge = f"{PREFIX}b{tag}"
        _run(["ip", "link", "add", cluster.bridge, "type", "bridge"])
        _run(["ip", "addr", "add", f"{net}.1/24", "dev", cluster.bridge])
        _run(["ip", "link", "set", cluster.bridge, "up"])
    cluster.bridge_ip = f"{net}.1"
    cluster.unreachable_ip = f"{net}.99"

    host_key = (workdir / "host_key.pub").read_text().split()
    known = []
    hosts = []
    for i in range(1, count + 1):
        host = Host(index=i, netns=f"{PREFIX}{tag}-h{i}", veth=f"rcv{tag}h{i}",
                    ip=f"{net}.{10 + i}", private_dir=workdir / f"private-h{i}")
        host.private_dir.mkdir(exist_ok=True)
        hosts.append(host)
        cluster.hosts = tuple(hosts)
        _add_host(cluster, host)
        known.append(f"{host.ip} {host_key[0]} {host_key[1]}")
    (workdir / "known_hosts").write_text("\n".join(known) + "\n")
    deadline = time.monotonic() + _STEP_TIMEOUT
    for host in hosts:
        _wait_port(host.ip, 22, deadline)


def _add_host(cluster: Cluster, host: Host) -> None:
    peer = f"{host.veth}p"
    _run(["ip", "netns", "add", host.netns])
    _run(["ip", "link", "add", host.veth, "type", "veth", "peer", "name", peer])
    _run(["ip", "link", "set", peer, "netns", host.netns])
    _run(["ip", "link", "set", host.veth, "master", cluster.bridge])
    _run(["ip", "link", "set", host.veth, "up"])
    ns = ["ip", "netns", "exec", host.netns]
    _run([*ns, "ip", "link", "set", "lo", "up"])
    _run([*ns, "ip", "link", "set", peer, "name", "eth0"])
    _run([*ns, "ip", "addr", "add", f"{host.ip}/24", "dev", "eth0"])
    _run([*ns, "ip", "link", "set", "eth0", "up"])
    _run([*ns, "ip", "route", "add", "default", "via", cluster.bridge_ip])

    cfg = cluster.workdir / f"sshd_config-h{host.index}"
    cfg.write_text(_sshd_config(cluster.workdir, host.ip))
    # `ip netns exec` execs sshd in a fresh mount namespace (slave of the root one),
    # so the bind mount below is seen by sshd and its sessions only.
    # Its own UTS namespace gives the host its own hostname (hostname() in a rank, and
    # OpenMPI's notion of a node); sh sets it, then becomes sshd (same pid).
    start = f"hostname {shlex.quote(host.hostname)} && exec {shlex.join([SSHD, '-D', '-e', '-f', str(cfg)])}"
    with open(cluster.workdir / f"sshd-h{host.index}.log", "ab") as log:
        proc = subprocess.Popen([*ns, "unshare", "--uts", "--", "sh", "-c", start],
                                stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                start_new_session=True)
    cluster.sshd[host.netns] = proc
    deadline = time.monotonic() + _STEP_TIMEOUT
    while _netns_pids(host.netns) != [proc.pid]:
        if proc.poll() is not None:
            raise RuntimeError(f"sshd for {host.netns} exited {proc.returncode}; see {log.name}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"sshd for {host.netns} did not start; see {log.name}")
        time.sleep(0.05)
    _run(["nsenter", "-t", str(proc.pid), "-m", "--", "mount", "--bind",
          str(host.private_dir), str(cluster.private_path)])


def teardown(cluster: Cluster) -> list[str]:
    """Kill everything in the hosts, delete namespaces and bridge; return what survived."""
    deadline = time.monotonic() + 5.0
    for proc in cluster.sshd.values():
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
    for host in cluster.hosts:
        _kill_netns_pids(host.netns, deadline)
    for proc in cluster.sshd.values():
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5.0)
    for host in cluster.hosts:
        _run(["ip", "netns", "del", host.netns], check=False)
        _run(["ip", "link", "del", host.veth], check=False)
    if cluster.bridge:
        _run(["ip", "link", "del", cluster.bridge], check=False)
    return leftovers(cluster)


def leftovers(cluster: Cluster) -> list[str]:
    """Return the namespaces, links and processes of ``cluster`` that still exist."""
    left: list[str] = []
    names = _run(["ip", "netns", "list"], check=False).stdout.split()
    links = _run(["ip", "-o", "link", "show"], check=False).stdout
    for host in cluster.hosts:
        if host.netns in names:
            left.append(f"netns {host.netns}")
        if re.search(rf"\b{re.escape(host.veth)}\b[@:]", links):
            left.append(f"link {host.veth}")
    if cluster.bridge and re.search(rf"\b{re.escape(cluster.bridge)}\b[@:]", links):
        left.append(f"link {cluster.bridge}")
    for proc in cluster.sshd.values():
        if proc.poll() is None:
            left.append(f"sshd pid {proc.pid}")
    return left
