"""Tests of ``ringcomm launch`` on this machine, with tiny scripts that exit, crash or hang.

Every test that starts processes has a timeout and proves that no rank pid
survives the launcher.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import sys
import time
from pathlib import Path

import pytest

from ringcomm.environment import rank_addresses
from ringcomm.launch import LaunchConfig, LaunchError, commands, launch
from ringcomm.launch.cli import build_parser, split_argv
from ringcomm.launch.options import program_argv
from ringcomm.launch.plan import plan_job
from ringcomm.launch.report import failure_report
from ringcomm.launch.supervisor import JobResult, RankExit, Reason
from tests import harness

ROOT = harness.ROOT
BEHAVE = harness.script("behave.py")
ENV_DUMP = harness.script("env_dump.py")


def run_launch(*args: str, timeout: float = 30, input: str | None = None,
               env: dict[str, str] | None = None) -> harness.Job:
    """Run ``ringcomm launch ARGS`` to completion; prove that no process of it survives."""
    return harness.run(harness.launch_argv(*args), timeout=timeout, input=input, environ=env)


def start_launch(*args: str) -> harness.Started:
    """Start ``ringcomm launch ARGS`` in the background."""
    return harness.Started(harness.launch_argv(*args))


def read_pids(outdir: Path, ranks: int, timeout: float = 15) -> list[int]:
    """Wait until every rank wrote its pid file; return all pids written (ranks and children)."""
    deadline = time.monotonic() + timeout
    while True:
        files = [outdir / f"pid{r}" for r in range(ranks)]
        if all(f.exists() for f in files):
            return [int(p) for f in files for p in f.read_text().split()]
        if time.monotonic() > deadline:
            raise AssertionError(f"ranks did not start: {sorted(os.listdir(outdir))}")
        time.sleep(0.05)


def assert_all_gone(pids: list[int], within: float = 10) -> None:
    """Assert that every pid in ``pids`` is gone within ``within`` seconds."""
    harness.assert_none_survive(pids=pids, within=within, what="the launcher")


# -- pure functions: nothing started -----------------------------------------


def test_split_argv_separates_program_from_options():
    p = build_parser()
    assert split_argv(p, ["-n", "2", "s.py", "--lr", "1"]) == (["-n", "2"], ["s.py", "--lr", "1"])
    assert split_argv(p, ["-n2", "--tag-output", "--", "-x"]) == (["-n2", "--tag-output"], ["-x"])
    assert split_argv(p, ["-n", "2", "-m", "pkg.mod", "-v"]) == (["-n", "2"], ["-m", "pkg.mod", "-v"])
    assert split_argv(p, ["--env=A=1", "prog"]) == (["--env=A=1"], ["prog"])
    assert split_argv(p, ["--bogus", "prog"]) == (["--bogus"], ["prog"])


def test_program_argv_rules(tmp_path):
    script = tmp_path / "s.py"
    script.write_text("")
    assert program_argv(["s.py", "a"], "/py", cwd=str(tmp_path)) == ["/py", str(script), "a"]
    assert program_argv(["-m", "pkg", "x"], "/py") == ["/py", "-m", "pkg", "x"]
    # A bare name runs what it names on this machine, at the same path on every host.
    assert program_argv(["echo", "hi"], "/py") == [shutil.which("echo"), "hi"]
    assert program_argv(["no-such-tool-here", "x"], "/py") == ["no-such-tool-here", "x"]
    # A Python interpreter by a bare name is the launching one (--python), not the remote PATH's.
    for name in ("python", "python3", "python3.11"):
        assert program_argv([name, "s.py", "a"], "/py", cwd=str(tmp_path)) == \
            ["/py", str(script), "a"]
    assert program_argv(["python3", "-m", "pkg"], "/py") == ["/py", "-m", "pkg"]
    with pytest.raises(LaunchError, match="python3 needs a script or -m MODULE"):
        program_argv(["python3"], "/py")
    with pytest.raises(LaunchError, match="not found"):
        program_argv(["missing.py"], "/py", cwd=str(tmp_path))
    assert program_argv(["missing.py"], "/py", cwd=str(tmp_path), must_exist=False)[1] == "missing.py"


def test_rank_addresses_connections_per_ip():
    assert rank_addresses(("10.0.0.1",), [5, 6]) == ["10.0.0.1:5", "10.0.0.1:6"]
    assert rank_addresses(("1.1.1.1", "2.2.2.2"), [1, 2]) == ["1.1.1.1:1", "2.2.2.2:2"]


def test_guard_argv_and_frames():
    argv = commands.guard_argv("/py", 123)
    assert argv[:2] == ["/py", "-c"] and "read(123)" in argv[2]
    assert commands.frame(b"D", b"ab") == b"D\x00\x00\x00\x02ab"
    assert commands.guard_remote_command("/p y", 5).startswith("exec '/p y' -c ")


def test_plan_local_ports_distinct_and_starting_port():
    cfg = LaunchConfig(command=["echo"], repeat_hosts=3, connections_per_ip=2)
    plan = plan_job(cfg)
    ports = [a.rsplit(":", 1)[1] for r in plan.ranks for a in r.addresses]
    assert len(set(ports)) == 6 and all(r.local for r in plan.ranks)
    plan = plan_job(LaunchConfig(command=["echo"], repeat_hosts=2, starting_port=40000))
    assert plan.rank_hostfile() == [["127.0.0.1:40000"], ["127.0.0.1:40001"]]
    assert plan.backend == "ring" and len(plan.token) == 32


def test_failure_report_names_rank_host_pid_signal():
    first = RankExit(rank=2, host="h", pid=77, code=139, signal=11, stderr_tail=("boom",))
    other = RankExit(rank=0, host="h", pid=5, code=143, stopped=True)
    text = "\n".join(failure_report(JobResult(139, Reason.FAILED, first, [first, other])))
    assert "rank 2 failed first: killed by SIGSEGV (exit code 139) (host h, pid 77)" in text
    assert "| boom" in text and "stopped the other ranks: 0" in text
    # Another launcher as the job's one process is named instead of a rank.
    tool = RankExit(rank=0, host="localhost", pid=9, code=3)
    assert failure_report(JobResult(3, Reason.FAILED, tool, [tool]), started_by="mpirun") == [
        "ringcomm launch: mpirun exit code 3", "ringcomm launch: exit code 3"]
    assert failure_report(JobResult(124, Reason.TIMEOUT, None, [tool]), started_by="srun")[0] \
        == "ringcomm launch: job timed out (--timeout); stopped srun"


def test_config_rejects_bad_values():
    with pytest.raises(LaunchError, match="no program"):
        LaunchConfig(command=[])
    with pytest.raises(LaunchError, match="connections-per-ip"):
        LaunchConfig(command=["x"], connections_per_ip=0)
    with pytest.raises(LaunchError, match=r"expected --backend in ring, mpi, got 'nccl'"):
        LaunchConfig(command=["x"], backend="nccl")


# -- real jobs ----------------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode,code,text", [
    ("exit3", 3, "exit code 3"),
    ("raise", 1, "RuntimeError: deliberate failure in rank 1"),
    ("segv", 139, "killed by SIGSEGV"),
])
def test_failing_rank_stops_the_others(tmp_path, mode, code, text):
    r = run_launch("-n", "3", "--env", "EXPECT_RANKS=3", BEHAVE, mode, str(tmp_path), "child")
    assert r.returncode == code, r.stderr
    assert "rank 1 failed first" in r.stderr and text in r.stderr
    assert "stopped the other ranks: 0, 2" in r.stderr
    assert_all_gone(read_pids(tmp_path, 3, timeout=1))


@pytest.mark.timeout(60)
def test_timeout_ends_hung_job(tmp_path):
    start = time.monotonic()
    r = run_launch("-n", "2", "--timeout", "2", BEHAVE, "hang", str(tmp_path), "child")
    assert r.returncode == 124 and "timed out" in r.stderr
    assert time.monotonic() - start < 15
    assert_all_gone(read_pids(tmp_path, 2, timeout=1))


@pytest.mark.timeout(60)
def test_kill9_of_launcher_leaves_no_rank(tmp_path):
    with start_launch("-n", "2", BEHAVE, "hang", str(tmp_path), "child") as launcher:
        pids = read_pids(tmp_path, 2)
        assert len(pids) == 4 and all(harness.alive(p) for p in pids)
        launcher.proc.kill()
        launcher.proc.wait(timeout=10)
        assert_all_gone(pids)
        harness.assert_none_survive(launcher.marker, within=10, what="the killed launcher")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_ends_every_rank(tmp_path, sig):
    with start_launch("-n", "2", BEHAVE, "hang", str(tmp_path), "child") as launcher:
        pids = read_pids(tmp_path, 2)
        launcher.send_signal(sig)
        job = launcher.wait(timeout=20, grace=10)
        assert job.returncode == 128 + sig, job.stderr
        assert "interrupted" in job.stderr
        assert_all_gone(pids)


@pytest.mark.timeout(60)
def test_environment_contract(tmp_path):
    env = harness.env(RINGCOMM_TIMEOUT="17", DUMP_DIR=str(tmp_path))
    r = run_launch("-n", "2", "--connections-per-ip", "2", "--env", "EXTRA=a b=c", ENV_DUMP,
                   env=env)
    assert r.returncode == 0, r.stderr
    dumps = [json.loads((tmp_path / f"env{i}.json").read_text()) for i in range(2)]
    hostfile = dumps[0]["hostfile_content"]
    assert len(hostfile) == 2 and all(len(e) == 2 for e in hostfile)
    assert all(a.startswith("127.0.0.1:") for e in hostfile for a in e)
    assert len({a for e in hostfile for a in e}) == 4
    for i, d in enumerate(dumps):
        assert d["RINGCOMM_RANK"] == d["MLX_RANK"] == str(i)
        assert d["RINGCOMM_HOSTFILE"] == d["MLX_HOSTFILE"]
        assert d["hostfile_content"] == hostfile
        assert d["RINGCOMM_BACKEND"] == "ring" and d["RINGCOMM_TIMEOUT"] == "17"
        assert d["EXTRA"] == "a b=c" and d["PYTHONUNBUFFERED"] == "1"
        assert not os.path.exists(d["RINGCOMM_HOSTFILE"])  # removed with the job
    token = dumps[0]["RINGCOMM_TOKEN"]
    assert len(token) == 32 and dumps[1]["RINGCOMM_TOKEN"] == token


@pytest.mark.timeout(60)
def test_concurrent_jobs_get_distinct_ports(tmp_path):
    dirs = [tmp_path / "a", tmp_path / "b"]
    for d in dirs:
        d.mkdir()
    jobs = [harness.Started(harness.launch_argv("-n", "2", ENV_DUMP),
                            environ=harness.env(DUMP_DIR=str(d))) for d in dirs]
    for job in jobs:
        with job:
            r = job.wait(timeout=30)
            assert r.returncode == 0, r.stderr
    ports = [{a for e in json.loads((d / "env0.json").read_text())["hostfile_content"] for a in e}
             for d in dirs]
    assert not ports[0] & ports[1]


@pytest.mark.timeout(30)
def test_starting_port_override(tmp_path):
    r = run_launch("-p", "45123", "-n", "2", ENV_DUMP, env=harness.env(DUMP_DIR=str(tmp_path)))
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "env1.json").read_text())["hostfile_content"] == [
        ["127.0.0.1:45123"], ["127.0.0.1:45124"]]


@pytest.mark.timeout(30)
def test_stdin_broadcast_and_tag_output():
    r = run_launch("-n", "2", "--tag-output", harness.script("echo_stdin.py"), input="hi\nthere\n")
    assert r.returncode == 0, r.stderr
    lines = sorted(r.stdout.splitlines())
    assert lines == ["[0] rank 0 got 'hi\\nthere\\n'", "[1] rank 1 got 'hi\\nthere\\n'"]


@pytest.mark.timeout(30)
def test_module_and_plain_program(tmp_path):
    env = harness.env(DUMP_DIR=str(tmp_path))
    r = run_launch("--cwd", str(harness.RANKS), "-n", "2", "-m", "env_dump", env=env)
    assert r.returncode == 0, r.stderr
    assert sorted(r.stdout.splitlines()) == ["rank 0 done", "rank 1 done"]
    r = run_launch("-n", "2", "--", "sh", "-c", 'echo "r$RINGCOMM_RANK"; exit 0')
    assert r.returncode == 0 and sorted(r.stdout.split()) == ["r0", "r1"]


@pytest.mark.timeout(30)
def test_missing_script_and_program(tmp_path):
    r = run_launch("-n", "2", str(tmp_path / "nope.py"))
    assert r.returncode == 2 and "not found" in r.stderr
    r = run_launch("-n", "1", "ringcomm-no-such-program")
    assert r.returncode == 127 and "no such program" in r.stderr


@pytest.mark.timeout(30)
def test_output_dir_and_dry_run(tmp_path):
    r = run_launch("-n", "2", "--output-dir", str(tmp_path / "out"), "--",
                   "sh", "-c", 'echo "out$RINGCOMM_RANK"; echo "err$RINGCOMM_RANK" >&2')
    assert r.returncode == 0
    assert (tmp_path / "out" / "rank1.stdout").read_text() == "out1\n"
    assert (tmp_path / "out" / "rank0.stderr").read_text() == "err0\n"
    r = run_launch("-n", "2", "--dry-run", "--", "sh", "-c", "touch should-not-exist")
    assert r.returncode == 0 and "rank 1 on 127.0.0.1 (local)" in r.stdout
    assert "RINGCOMM_TOKEN=<secret>" in r.stdout and not Path("should-not-exist").exists()


@pytest.mark.timeout(30)
def test_python_api_returns_exit_code(tmp_path):
    cfg = LaunchConfig(command=["sh", "-c", "exit $((RINGCOMM_RANK + 4))"], repeat_hosts=2,
                       forward_stdin=False)
    assert launch(cfg) in (4, 5)
    assert launch(LaunchConfig(command=["true"], repeat_hosts=2, forward_stdin=False)) == 0


def test_mpirun_argv_and_openmpi_hostfile(monkeypatch):
    from ringcomm.launch import mpi
    from ringcomm.launch.plan import JobPlan, RankSpec, WrappedLaunch
    from ringcomm.launch.report import describe_plan

    cfg = LaunchConfig(command=["-m", "mod"], cwd="/w", mpi_args=("--bind-to none", "-v"),
                       backend="mpi", python="/py")
    ranks = [RankSpec(0, "h1", False, ()), RankSpec(1, "h1", False, ()),
             RankSpec(2, "127.0.0.1", True, ())]
    plan = JobPlan(config=cfg, backend="mpi", ranks=ranks, argv=["/py", "-m", "mod"])
    assert mpi.openmpi_hostfile(plan) == "h1 slots=2\nlocalhost slots=1\n"
    argv = mpi.mpirun_argv("mpirun", "/hf", plan, ["A", "B"], as_root=True)
    assert argv == ["mpirun", "--hostfile", "/hf", "-np", "3", "--allow-run-as-root",
                    "--wdir", "/w", "-x", "A", "-x", "B", "--bind-to", "none", "-v",
                    "--", "/py", "-m", "mod"]
    # Without a binding of the user's, ranks are not bound to one core each.
    plain = JobPlan(config=LaunchConfig(command=["x"], backend="mpi"), backend="mpi",
                    ranks=ranks, argv=["x"])
    assert mpi.mpirun_argv("mpirun", "/hf", plain, [], as_root=False)[-4:] == [
        "--bind-to", "none", "--", "x"]
    env = mpi.mpi_env(plan, as_root=True)
    assert env["OMPI_ALLOW_RUN_AS_ROOT"] == "1" and env["RINGCOMM_BACKEND"] == "mpi"
    text = describe_plan(plan, WrappedLaunch("mpirun", argv, env, plan.size,
                                             mpi.openmpi_hostfile(plan)))
    assert text.splitlines()[:2] == ["job: 3 ranks, backend mpi, started by mpirun",
                                     "mpirun: " + shlex.join(argv)]
    assert "  env: RINGCOMM_TOKEN=<secret>" in text and plan.token not in text
    assert text.endswith("hostfile:\n  h1 slots=2\n  localhost slots=1")
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setattr(sys, "executable", "/nonexistent/python")
    with pytest.raises(LaunchError, match=r'pip install "ringcomm\[mpi\]"'):
        mpi.find_mpirun("/nonexistent/python")


def test_remote_plan_and_ssh_argv():
    from ringcomm.launch.remote import explain_ssh_failure, ssh_guard_argv

    plan = plan_job(LaunchConfig(command=["x.py"], hosts=("10.255.0.1", "10.255.0.2"),
                                 repeat_hosts=2, starting_port=30000))
    assert [r.local for r in plan.ranks] == [False] * 4
    assert plan.rank_hostfile() == [["10.255.0.1:30000"], ["10.255.0.1:30001"],
                                    ["10.255.0.2:30002"], ["10.255.0.2:30003"]]
    argv = ssh_guard_argv("h", "/py")
    assert argv[0] == "ssh" and "BatchMode=yes" in argv and argv[-2] == "h"
    assert argv[-1].startswith("exec /py -c ")
    assert "was not found on h" in explain_ssh_failure("h", 127, (), "/py")
    assert "ssh to h" in explain_ssh_failure("h", 255, ("Connection refused",), "/py")
    with pytest.raises(LaunchError, match="cannot resolve host"):
        plan_job(LaunchConfig(command=["x"], hosts=("no-such-host.invalid",)))
    with pytest.raises(LaunchError, match="loopback host cannot be in a job with remote"):
        plan_job(LaunchConfig(command=["x"], hosts=("127.0.0.1", "10.255.0.1")))


def test_top_level_cli(capsys):
    from ringcomm.cli import main

    assert main(["nope"]) == 2 and "unknown command 'nope'" in capsys.readouterr().err
    assert main(["launch", "--print-python"]) == 0
    assert capsys.readouterr().out.strip() == sys.executable
    assert main(["--help"]) == 0 and "launch" in capsys.readouterr().out


@pytest.mark.timeout(60)
def test_check_flag_runs_preflight_first(tmp_path):
    r = run_launch("--check", "-n", "2", "--", "sh", "-c", "echo ran")
    assert r.returncode == 0, r.stderr
    assert "no problem" in r.stderr and r.stdout.split() == ["ran", "ran"]


@pytest.mark.mpi
@pytest.mark.timeout(60)
def test_mpi_mode_propagates_exit_code():
    from ringcomm.launch.mpi import find_mpirun

    try:
        find_mpirun(sys.executable)
    except LaunchError as e:
        pytest.skip(str(e))
    r = run_launch("--backend", "mpi", "-n", "2", "--",
                   "sh", "-c", 'echo "rank $OMPI_COMM_WORLD_RANK $RINGCOMM_BACKEND"; '
                   # rank 1 ends first and cleanly, so mpirun cannot stop it before it prints
                   '[ "$OMPI_COMM_WORLD_RANK" = 1 ] && exit 0; sleep 1; exit 3')
    assert r.returncode == 3, r.stderr
    assert sorted(r.stdout.splitlines()) == ["rank 0 mpi", "rank 1 mpi"]
    assert "mpirun exit code 3" in r.stderr


@pytest.mark.timeout(60)
def test_real_mlx_program_runs_unchanged():
    pytest.importorskip("mlx.core")
    r = run_launch("-n", "2", "--connections-per-ip", "2", harness.script("mlx_program.py"))
    assert r.returncode == 0, r.stderr
    assert sorted(r.stdout.splitlines()) == ["mlx rank 0/2: [3.0, 3.0, 3.0, 3.0]",
                                             "mlx rank 1/2: [3.0, 3.0, 3.0, 3.0]"]


@pytest.mark.timeout(30)
def test_lines_never_mix_between_ranks():
    code = ("import os, sys\n"
            "r = os.environ['RINGCOMM_RANK']\n"
            "for i in range(200):\n"
            "    sys.stdout.write(r * 5000 + '\\n')\n")
    r = run_launch("-n", "3", "--", sys.executable, "-c", code)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 600
    assert all(len(set(line)) == 1 and len(line) == 5000 for line in lines)


@pytest.mark.timeout(30)
def test_closed_stdin_is_handled():
    cmd = ["sh", "-c", 'exec "$@" <&-', "sh",
           *harness.launch_argv("-n", "2", "--", "sh", "-c", 'echo "r$RINGCOMM_RANK"')]
    r = harness.run(cmd, timeout=30)
    assert r.returncode == 0, r.stderr
    assert sorted(r.stdout.split()) == ["r0", "r1"]


@pytest.mark.timeout(30)
def test_hostfile_errors_reach_the_command_line(tmp_path):
    bad = tmp_path / "hosts.json"
    bad.write_text('[{"ssh": "a", "ips": ["not-an-ip"]}]')
    r = run_launch("--hostfile", str(bad), "--", "true")
    assert r.returncode == 2
    assert f"hostfile '{bad}': hosts[0].ips[0]: expected an ip address" in r.stderr
    r = run_launch("--hostfile", str(bad), "--hosts", "a", "--", "true")
    assert r.returncode == 2 and "either --hosts or --hostfile" in r.stderr


def _imports(path: Path) -> list[str]:
    """Return the modules `path` imports, relative ones resolved inside the ringcomm package."""
    import ast

    package = path.relative_to(ROOT).with_suffix("").parts[:-1]
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = list(package[:len(package) - node.level + 1]) if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            out += [f"{module}.{a.name}" for a in node.names]  # a name may be a submodule
    return out


def test_launcher_imports_no_backend_and_guard_only_stdlib():
    # The launcher may read the registry (ringcomm.backends) and find mpirun through the
    # stdlib-only ringcomm.backends.mpi.detect; no backend implementation, no transport.
    allowed = {"ringcomm.backends", "ringcomm.backends.mpi.detect"}
    launcher = [*(ROOT / "ringcomm" / "launch").glob("*.py"), *(ROOT / "ringcomm" / "hosts").glob("*.py")]
    assert len(launcher) > 15
    for path in launcher:
        names = _imports(path)
        bad = [m for m in names if (m.startswith("ringcomm.backends") and m not in allowed)
               or m.startswith("ringcomm.transport")]
        assert not bad, (path, bad)
        if path.name == "guard.py":
            assert all(m.split(".")[0] in sys.stdlib_module_names for m in names), names
    # And the rank side imports nothing of the launcher.
    for path in [*(ROOT / "ringcomm" / "backends").rglob("*.py"),
                 *(ROOT / "ringcomm" / "transport").glob("*.py")]:
        bad = [m for m in _imports(path) if m.startswith(("ringcomm.launch", "ringcomm.hosts"))]
        assert not bad, (path, bad)

