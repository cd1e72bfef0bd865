"""A real Slurm cluster (slurmctld, one slurmd per host, munge) on the namespace hosts.

The hosts come from ``netns.build``. On top of them this module starts:

- one ``munged`` for the whole machine, in the root namespace, with its own
  key and socket in a temporary directory. Every host shares the filesystem,
  so every daemon and client reaches that socket; ``AuthInfo=socket=...``
  points Slurm at it. The socket's directory must be searchable by all
  (munged refuses it otherwise), so the temporary directory is 0755 under
  /tmp, not under pytest's 0700 directories.
- ``slurmctld`` in the first host's network namespace, so its port never
  clashes with anything on this machine, in a UTS namespace of its own whose
  hostname is the ``SlurmctldHost`` name (slurmctld refuses to run on a host
  whose name is not a controller's).
- one ``slurmd -N NODE`` per host, in that host's network namespace and in a
  UTS namespace whose hostname is the node name: ranks on different nodes
  then see different ``socket.gethostname()`` values, as on real machines,
  and ringcomm does not mistake them for one host.

Node names must resolve inside the job (``SLURM_STEP_NODELIST`` holds names,
and a rank resolves the first one to meet rank 0). Each daemon also runs in a
mount namespace of its own where a hosts file (this machine's ``/etc/hosts``
plus the node names) is bind-mounted over ``/etc/hosts``; the job steps a
daemon starts inherit it, and this machine's ``/etc/hosts`` is never touched.
The daemons enter their host's network namespace with ``nsenter --net``, not
``ip netns exec``: the latter mounts a fresh ``/sys`` without
``/sys/fs/cgroup``, and slurmd refuses to start without a cgroup filesystem
(even with ``proctrack/linuxproc`` and ``task/none``, which use none).

``srun`` and ``sbatch`` run in the root namespace with ``SLURM_CONF`` set
(:meth:`SlurmCluster.env`); they reach slurmctld and the slurmds over the
bridge. :func:`stop` kills every daemon and every job process, removes the
temporary files and returns whatever survived, so a test can assert that
nothing did.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ringcomm.transport.shm import alive
from tests.multihost import netns

__all__ = ["Node", "SlurmCluster", "cleanup_stale", "skip_reason", "start", "stop"]

NODE_PREFIX = "rcnode"
CONTROLLER = "rcctl"
PARTITION = "ringcomm"
WORK_PREFIX = "ringcomm-slurm-"
_TOOLS = ("slurmctld", "slurmd", "srun", "sbatch", "sinfo", "scancel", "squeue", "munged",
          "mungekey", "unshare", "nsenter", "mount")
_READY_TIMEOUT = 60.0
_STOP_TIMEOUT = 10.0
# Shown when a daemon fails: the last lines of its log say why.
_LOG_TAIL = 2000


@dataclass(frozen=True)
class Node:
    """One Slurm node: its name and the namespace host it runs on."""

    name: str
    host: netns.Host


@dataclass
class SlurmCluster:
    """A running Slurm cluster on namespace hosts, and everything needed to remove it."""

    hosts: netns.Cluster
    workdir: Path
    conf: Path
    nodes: tuple[Node, ...]
    munge_socket: Path
    cpus: int
    daemons: dict[str, subprocess.Popen] = field(default_factory=dict)

    @property
    def node_names(self) -> list[str]:
        """Return the node names in host order."""
        return [n.name for n in self.nodes]

    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """Return an environment whose Slurm commands talk to this cluster."""
        env = dict(os.environ if base is None else base)
        # A job's own variables in the caller's environment would leak into srun.
        for name in [k for k in env if k.startswith("SLURM_")]:
            del env[name]
        env["SLURM_CONF"] = str(self.conf)
        return env

    def command(self, argv: list[str], *, timeout: float, env: dict[str, str] | None = None
                ) -> subprocess.CompletedProcess[str]:
        """Run a Slurm client command; on timeout cancel every job and raise TimeoutError."""
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=self.env(env),
                                start_new_session=True)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.cancel_all()
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate(timeout=_STOP_TIMEOUT)
            raise TimeoutError(f"{argv[0]} did not end within {timeout:g} s; every job was "
                               f"cancelled.\nstdout:\n{out}\nstderr:\n{err}") from None
        return subprocess.CompletedProcess(argv, proc.returncode, out, err)

    def srun(self, args: list[str], *, timeout: float, env: dict[str, str] | None = None
             ) -> subprocess.CompletedProcess[str]:
        """Run ``srun --export=ALL ARGS`` and capture its output."""
        return self.command(["srun", "--export=ALL", *args], timeout=timeout, env=env)

    def sbatch(self, args: list[str], *, timeout: float, env: dict[str, str] | None = None
               ) -> subprocess.CompletedProcess[str]:
        """Run ``sbatch --wait --export=ALL ARGS``: submit and wait for the job to end."""
        return self.command(["sbatch", "--wait", "--export=ALL", *args], timeout=timeout,
                            env=env)

    def cancel_all(self) -> None:
        """Cancel every job of this cluster (it is this run's alone)."""
        with contextlib.suppress(subprocess.TimeoutExpired, OSError):
            subprocess.run(["scancel", "--full", f"--partition={PARTITION}"], env=self.env(),
                           stdin=subprocess.DEVNULL, capture_output=True, timeout=_STOP_TIMEOUT,
                           check=False)

    def states(self) -> dict[str, str]:
        """Return each node's state as ``sinfo`` reports it (empty when slurmctld is down)."""
        try:
            res = subprocess.run(["sinfo", "--noheader", "--Node", "--format=%N %T"],
                                 env=self.env(), stdin=subprocess.DEVNULL, capture_output=True,
                                 text=True, timeout=_STOP_TIMEOUT, check=False)
        except subprocess.TimeoutExpired:
            return {}
        states: dict[str, str] = {}
        for line in res.stdout.splitlines():
            name, _, state = line.partition(" ")
            states[name] = state.strip()
        return states

    def jobs(self) -> list[str]:
        """Return the ids of the jobs slurmctld still knows as pending or running."""
        res = subprocess.run(["squeue", "--noheader", "--format=%i"], env=self.env(),
                             stdin=subprocess.DEVNULL, capture_output=True, text=True,
                             timeout=_STOP_TIMEOUT, check=False)
        return res.stdout.split()

    def daemon_pids(self) -> set[int]:
        """Return the pids of the sshd and Slurm daemons that belong in the hosts."""
        pids = {p.pid for p in self.hosts.sshd.values()}
        pids |= {p.pid for k, p in self.daemons.items() if k != "munged"}
        # slurmctld forks a helper for its scripts (slurmscriptd) at start: a daemon too.
        ctld = self.daemons.get("slurmctld")
        if ctld is not None:
            pids |= {p for p in _children(ctld.pid) if _cmdline(p).endswith("slurmscriptd")}
        return pids

    def job_pids(self) -> dict[str, list[int]]:
        """Return, per node, the pids in its host other than the daemons (job processes)."""
        keep = self.daemon_pids()
        found = {n.name: [p for p in self.hosts.pids(n.host) if p not in keep]
                 for n in self.nodes}
        return {name: pids for name, pids in found.items() if pids}

    def wait_no_job_processes(self, timeout: float = 10.0) -> dict[str, list[str]]:
        """Wait until no job process runs on any node; return what is left (pid and command)."""
        deadline = time.monotonic() + timeout
        while (left := self.job_pids()) and time.monotonic() < deadline:
            time.sleep(0.1)
        return {name: [f"{p} {_cmdline(p)}" for p in pids] for name, pids in left.items()}

    def log(self, name: str) -> str:
        """Return the tail of a daemon's log (``munged``, ``slurmctld`` or a node name)."""
        path = self.workdir / "log" / f"{name}.log"
        try:
            return path.read_text(errors="replace")[-_LOG_TAIL:]
        except FileNotFoundError:
            return f"(no log at {path})"


def skip_reason() -> str | None:
    """Return why a Slurm cluster cannot run here, or None when it can."""
    reason = netns.skip_reason()
    if reason is not None:
        return reason
    missing = [t for t in _TOOLS if shutil.which(t) is None]
    if missing:
        return (f"Slurm tests need {', '.join(missing)}; install them with .ci/setup-slurm "
                "(apt-get install slurmctld slurmd slurm-client munge)")
    return None


def _cmdline(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return "?"
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()


def _children(pid: int) -> list[int]:
    found = []
    for child in _all_pids():
        try:
            stat = Path(f"/proc/{child}/stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(child)
    return found


def _slurm_conf(cluster: SlurmCluster, controller: netns.Host) -> str:
    w = cluster.workdir
    lines = [
        "ClusterName=ringcomm",
        f"SlurmctldHost={CONTROLLER}({controller.ip})",
        "SlurmUser=root",
        "SlurmdUser=root",
        "AuthType=auth/munge",
        "CredType=cred/munge",
        f"AuthInfo=socket={cluster.munge_socket}",
        f"StateSaveLocation={w / 'state'}",
        f"SlurmdSpoolDir={w / 'spool'}/%n",
        f"SlurmctldPidFile={w / 'run' / 'slurmctld.pid'}",
        f"SlurmdPidFile={w / 'run'}/slurmd-%n.pid",
        f"SlurmctldLogFile={w / 'log' / 'slurmctld.log'}",
        f"SlurmdLogFile={w / 'log'}/%n.log",
        f"PlugStackConfig={w / 'plugstack.conf'}",
        f"TmpFS={w / 'tmp'}",
        "SlurmctldDebug=info",
        "SlurmdDebug=info",
        # No cgroups: processes are tracked by parent pid and ended by signals.
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "JobAcctGatherType=jobacct_gather/none",
        "AccountingStorageType=accounting_storage/none",
        "JobCompType=jobcomp/none",
        "SwitchType=switch/none",
        "MpiDefault=none",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core",
        "SchedulerType=sched/builtin",
        "ReturnToService=2",
        # The node lines win over what each slurmd detects: every slurmd runs on
        # this one machine, and each node offers all of its cores.
        "SlurmdParameters=config_overrides",
        "MailProg=/bin/true",
        "KillWait=2",
        "UnkillableStepTimeout=30",
        "MessageTimeout=10",
        "InactiveLimit=0",
        "",
    ]
    for node in cluster.nodes:
        lines.append(f"NodeName={node.name} NodeAddr={node.host.ip} NodeHostname={node.name} "
                     f"CPUs={cluster.cpus} State=UNKNOWN")
    lines.append(f"PartitionName={PARTITION} Nodes=ALL Default=YES MaxTime=INFINITE State=UP")
    return "\n".join(lines) + "\n"


def _hosts_file(cluster: SlurmCluster, controller: netns.Host) -> str:
    try:
        base = Path("/etc/hosts").read_text()
    except FileNotFoundError:
        base = "127.0.0.1 localhost\n"
    names = [f"{n.host.ip} {n.name}" for n in cluster.nodes]
    names.append(f"{controller.ip} {CONTROLLER}")
    return base.rstrip("\n") + "\n# Slurm test nodes\n" + "\n".join(names) + "\n"


def _in_host(host: netns.Host, name: str, hosts_file: Path, argv: list[str]) -> list[str]:
    """Return ``argv`` run in ``host``'s network namespace as a machine called ``name``.

    New UTS and mount namespaces: the hostname is ``name`` and ``hosts_file``
    is ``/etc/hosts``, for the daemon and everything it starts. The shell only
    sets both up and execs, so the pid stays the daemon's.
    """
    script = 'hostname "$0" && mount --bind "$1" /etc/hosts && shift && exec "$@"'
    return ["nsenter", f"--net=/run/netns/{host.netns}", "--",
            "unshare", "--uts", "--mount", "--propagation", "private", "--",
            "sh", "-c", script, name, str(hosts_file), *argv]


def _spawn(cluster: SlurmCluster, key: str, argv: list[str]) -> None:
    log = cluster.workdir / "log" / f"{key}.out"
    with open(log, "ab") as out:
        cluster.daemons[key] = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=cluster.env(),
            start_new_session=True)


def _check_alive(cluster: SlurmCluster) -> None:
    for key, proc in cluster.daemons.items():
        if proc.poll() is not None:
            out = (cluster.workdir / "log" / f"{key}.out").read_text(errors="replace")
            raise RuntimeError(f"{key} exited {proc.returncode} while the Slurm test cluster "
                               f"started.\noutput:\n{out[-_LOG_TAIL:]}\nlog:\n{cluster.log(key)}")


def _wait(cluster: SlurmCluster, ready: Callable[[], bool], what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        _check_alive(cluster)
        if ready():
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"the Slurm test cluster: {what} not within {timeout:g} s; "
                               f"node states {cluster.states()}\nslurmctld log:\n"
                               f"{cluster.log('slurmctld')}")
        time.sleep(0.2)


def start(hosts: netns.Cluster, *, cpus: int = 2) -> SlurmCluster:
    """Start munged, slurmctld and one slurmd per host; wait until every node is idle.

    Undoes everything when a step fails and raises RuntimeError with the log
    that says why.
    """
    cleanup_stale()
    workdir = Path(tempfile.mkdtemp(prefix=f"{WORK_PREFIX}{os.getpid()}-"))
    # munged requires the socket's directory (and its parents) searchable by all.
    workdir.chmod(0o755)
    for sub in ("state", "spool", "run", "log", "tmp", "munge"):
        (workdir / sub).mkdir()
    (workdir / "munge").chmod(0o755)
    nodes = tuple(Node(f"{NODE_PREFIX}{h.index}", h) for h in hosts.hosts)
    cluster = SlurmCluster(hosts=hosts, workdir=workdir, conf=workdir / "slurm.conf",
                           nodes=nodes, munge_socket=workdir / "munge" / "munge.socket",
                           cpus=cpus)
    try:
        _start(cluster)
    except BaseException:
        stop(cluster)
        raise
    return cluster


def _start(cluster: SlurmCluster) -> None:
    w = cluster.workdir
    controller = cluster.nodes[0].host
    for node in cluster.nodes:
        (w / "spool" / node.name).mkdir()
    (w / "plugstack.conf").write_text("")
    cluster.conf.write_text(_slurm_conf(cluster, controller))
    hosts_file = w / "hosts"
    hosts_file.write_text(_hosts_file(cluster, controller))

    key = w / "munge" / "munge.key"
    subprocess.run(["mungekey", "--create", f"--keyfile={key}"], check=True,
                   capture_output=True, timeout=_STOP_TIMEOUT)
    _spawn(cluster, "munged", [
        "munged", "--foreground", f"--socket={cluster.munge_socket}", f"--key-file={key}",
        f"--pid-file={w / 'run' / 'munged.pid'}", f"--seed-file={w / 'munge' / 'munged.seed'}",
        f"--log-file={w / 'log' / 'munged.log'}"])
    _wait(cluster, cluster.munge_socket.exists, "munged's socket", _READY_TIMEOUT)

    _spawn(cluster, "slurmctld",
           _in_host(controller, CONTROLLER, hosts_file, ["slurmctld", "-D", "-c", "-i"]))
    _wait(cluster, lambda: bool(cluster.states()), "slurmctld answering sinfo", _READY_TIMEOUT)
    for node in cluster.nodes:
        _spawn(cluster, node.name,
               _in_host(node.host, node.name, hosts_file, ["slurmd", "-D", "-N", node.name]))
    names = set(cluster.node_names)

    def idle() -> bool:
        states = cluster.states()
        return set(states) == names and all(s == "idle" for s in states.values())

    _wait(cluster, idle, "every node idle", _READY_TIMEOUT)


def _end(procs: list[subprocess.Popen], deadline: float) -> None:
    """SIGTERM ``procs``, wait until ``deadline``, then SIGKILL the rest and reap them."""
    for proc in procs:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait(timeout=_STOP_TIMEOUT)


def stop(cluster: SlurmCluster) -> list[str]:
    """Cancel every job, stop every daemon, remove the files; return what survived.

    The namespace hosts stay (``netns.teardown`` removes them); the job
    processes in them are killed here.
    """
    if "slurmctld" in cluster.daemons and cluster.daemons["slurmctld"].poll() is None:
        cluster.cancel_all()
        deadline = time.monotonic() + _STOP_TIMEOUT
        while time.monotonic() < deadline and cluster.jobs():
            time.sleep(0.2)
    deadline = time.monotonic() + _STOP_TIMEOUT
    slurmds = [p for k, p in cluster.daemons.items() if k not in ("munged", "slurmctld")]
    _end(slurmds, deadline)
    _end([p for k, p in cluster.daemons.items() if k == "slurmctld"], deadline)
    # A job process that outlives the cancelled jobs and the daemons is reported, then killed.
    survivors = [f"{name}: pid {desc} (outlived its job and the daemons)"
                 for name, descs in cluster.wait_no_job_processes(5.0).items() for desc in descs]
    for _ in range(2):
        for pids in cluster.job_pids().values():
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        time.sleep(0.2)
    _end([p for k, p in cluster.daemons.items() if k == "munged"], time.monotonic() + 5.0)
    left = survivors + leftovers(cluster)
    shutil.rmtree(cluster.workdir, ignore_errors=True)
    if cluster.workdir.exists():
        left.append(f"directory {cluster.workdir}")
    return left


def leftovers(cluster: SlurmCluster) -> list[str]:
    """Return the daemons, job processes and files of ``cluster`` that still exist."""
    left = [f"{key} pid {p.pid}" for key, p in cluster.daemons.items() if p.poll() is None]
    for name, pids in cluster.job_pids().items():
        left += [f"{name}: pid {p} {_cmdline(p)}" for p in pids]
    # Anything anywhere that names this run's directory (munged's socket, a daemon).
    workdir = str(cluster.workdir)
    for pid in _all_pids():
        if pid != os.getpid() and workdir in _cmdline(pid):
            left.append(f"pid {pid} {_cmdline(pid)}")
    return left


def _all_pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def _pid_gone(pid: int) -> bool:
    return not alive(pid)


def cleanup_stale() -> list[str]:
    """Remove what runs whose process is gone left: daemons and work directories."""
    removed: list[str] = []
    for path in Path(tempfile.gettempdir()).glob(f"{WORK_PREFIX}*"):
        m = re.match(rf"^{WORK_PREFIX}(\d+)-", path.name)
        if not m or not _pid_gone(int(m.group(1))):
            continue
        for pid in _all_pids():
            if str(path) in _cmdline(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        shutil.rmtree(path, ignore_errors=True)
        removed.append(str(path))
    return removed
