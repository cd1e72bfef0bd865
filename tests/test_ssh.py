"""ssh command lines, local-host detection and the deadline runner, without any ssh server."""

from __future__ import annotations

import os
import shlex
import sys
import time

import pytest

from ringcomm.hosts import ssh

pytestmark = pytest.mark.timeout(60)


def test_ssh_argv_has_batchmode_timeout_and_quoted_command() -> None:
    argv = ssh.ssh_argv("h1", ["python", "my script.py", "--x=$HOME"], connect_timeout=2.5)
    assert argv[:5] == ["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=3"]
    assert argv[-3:-1] == ["--", "h1"]
    assert shlex.split(argv[-1]) == ["exec", "python", "my script.py", "--x=$HOME"]


def test_ssh_argv_port_user_options() -> None:
    argv = ssh.ssh_argv("10.0.0.2", ["true"], port=2222, user="bob",
                        options=["ServerAliveInterval=5"])
    assert argv[argv.index("-p") + 1] == "2222"
    assert argv[argv.index("-l") + 1] == "bob"
    assert "ServerAliveInterval=5" in argv
    assert argv.index("ServerAliveInterval=5") < argv.index("--")


@pytest.mark.parametrize("host", ["", "-oProxyCommand=x", "a b"])
def test_ssh_argv_rejects_bad_hosts(host: str) -> None:
    with pytest.raises(ValueError, match="invalid ssh host"):
        ssh.ssh_argv(host, ["true"])


def test_remote_command_cwd_and_env_survive_a_shell() -> None:
    cmd = ssh.remote_command(["printf", "%s|", "a b", "$X", "'q'"], cwd="/tmp",
                             env={"X": "v w", "Y": "$(no)"})
    assert cmd.startswith("cd /tmp && ")
    res = ssh.run(["sh", "-c", cmd], timeout=10)
    assert res.ok, res
    assert res.stdout == "a b|$X|'q'|"


def test_remote_command_env_is_applied() -> None:
    cmd = ssh.remote_command([sys.executable, "-c", "import os;print(os.environ['Y'])"],
                             env={"Y": "$(no) `x`"})
    assert ssh.run(["sh", "-c", cmd], timeout=20).stdout.strip() == "$(no) `x`"


def test_remote_command_rejects_bad_env_names_and_empty_argv() -> None:
    with pytest.raises(ValueError, match="invalid environment variable name"):
        ssh.remote_command(["true"], env={"A B": "1"})
    with pytest.raises(ValueError, match="empty remote command"):
        ssh.remote_command([])


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1", "127.0.1.1", "::1", "[::1]",
                                  "me@localhost"])
def test_loopback_is_local(host: str) -> None:
    assert ssh.is_local_host(host)


def test_foreign_addresses_are_not_local() -> None:
    assert not ssh.is_local_host("192.0.2.254")  # TEST-NET-1, never assigned here
    assert not ssh.is_local_host("no-such-host.invalid", timeout=2)


def test_own_interface_address_is_local() -> None:
    import socket
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # no packet is sent for a UDP connect
        except OSError:
            pytest.skip("no IPv4 route")
        own = s.getsockname()[0]
    assert ssh.is_local_host(own)


def test_resolve_host_literal_and_failure() -> None:
    assert ssh.resolve_host("10.1.2.3") == ["10.1.2.3"]
    with pytest.raises(OSError, match="cannot resolve host 'no-such-host.invalid'"):
        ssh.resolve_host("no-such-host.invalid", timeout=2)


def test_run_captures_output_and_code() -> None:
    code = "import sys;print('out');print('err',file=sys.stderr);sys.exit(3)"
    res = ssh.run([sys.executable, "-c", code], timeout=20)
    assert (res.returncode, res.stdout, res.stderr, res.timed_out) == (3, "out\n", "err\n", False)
    assert not res.ok


def test_run_deadline_kills_the_process_group(tmp_path) -> None:
    pidfile = tmp_path / "child.pid"
    script = (f"import subprocess,time;p=subprocess.Popen(['sleep','300']);"
              f"open({str(pidfile)!r},'w').write(str(p.pid));time.sleep(300)")
    start = time.monotonic()
    res = ssh.run([sys.executable, "-c", script], timeout=2)
    assert res.timed_out and not res.ok
    assert time.monotonic() - start < 10
    child = int(pidfile.read_text())
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{child}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    break
        except FileNotFoundError:
            break
        time.sleep(0.05)
    else:
        os.kill(child, 9)
        pytest.fail(f"grandchild {child} survived the deadline")


def test_run_passes_input_env_cwd(tmp_path) -> None:
    code = "import os,sys;print(sys.stdin.read(),os.getcwd(),os.environ['Z'])"
    res = ssh.run([sys.executable, "-c", code], timeout=20, input="hi",
                  env={**os.environ, "Z": "z"}, cwd=str(tmp_path))
    assert res.stdout.split() == ["hi", str(tmp_path), "z"]


def _failed(stderr: str, code: int = 255, timed_out: bool = False) -> ssh.Result:
    return ssh.Result(argv=("ssh",), returncode=code, stdout="", stderr=stderr,
                      timed_out=timed_out, seconds=5.0)


@pytest.mark.parametrize("stderr, needle", [
    ("root@h: Permission denied (publickey).", "ssh-copy-id h"),
    ("Host key verification failed.", "ssh-keyscan"),
    ("ssh: Could not resolve hostname h: Name or service not known", "DNS"),
    ("ssh: connect to host h port 22: Connection timed out", "firewall"),
    ("ssh: connect to host h port 22: No route to host", "host is up"),
    ("ssh: connect to host h port 22: Connection refused", "sshd runs"),
])
def test_explain_gives_hints(stderr: str, needle: str) -> None:
    assert needle in ssh.explain(_failed(stderr), "h")


def test_explain_timeout_and_unknown() -> None:
    assert "did not finish within 5s" in ssh.explain(_failed("", timed_out=True), "h")
    assert ssh.explain(_failed("weird\nlast line", code=1), "h") == "ssh to h exited 1: last line"


def test_resolve_ssh_host_strips_user_and_follows_aliases(tmp_path) -> None:
    assert ssh.resolve_ssh_host("me@127.0.0.1") == ["127.0.0.1"]
    fake = tmp_path / "ssh"
    fake.write_text('#!/bin/sh\nprintf "user root\\nhostname 10.9.8.7\\nport 22\\n"\n')
    fake.chmod(0o755)
    assert ssh.ssh_config_hostname("alias", ssh=str(fake)) == "10.9.8.7"


def test_ssh_config_hostname_of_a_failing_ssh(tmp_path) -> None:
    fake = tmp_path / "ssh"
    fake.write_text("#!/bin/sh\nexit 255\n")
    fake.chmod(0o755)
    assert ssh.ssh_config_hostname("alias", ssh=str(fake)) is None
    assert ssh.ssh_config_hostname("alias", ssh=str(tmp_path / "missing")) is None
