"""``ringcomm check`` on this machine only (no ssh) and its report formatting."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from ringcomm.hosts import preflight as check
from ringcomm.hosts.cli import check_main
from ringcomm.hosts.hostfile import HostEntry

pytestmark = pytest.mark.timeout(60)

REPO = str(Path(__file__).resolve().parents[1])


def test_local_check_passes_with_a_ring_of_three(tmp_path: Path) -> None:
    script = tmp_path / "job.py"
    script.write_text("")
    report = check.run_checks([HostEntry("127.0.0.1")], repeat=3, program=str(script), cwd=REPO)
    assert report.ok, check.format_report(report)
    assert [(link.src_rank, link.dst_rank) for link in report.links] == [(0, 1), (1, 2), (2, 0)]
    assert report.status("127.0.0.1", "script") is check.Status.OK


def test_local_missing_script_and_python(tmp_path: Path) -> None:
    report = check.run_checks([HostEntry("localhost")], program="missing.py", cwd=str(tmp_path),
                              python=str(tmp_path / "no-python"))
    problems = report.problems()
    assert len(problems) == 1
    assert problems[0].startswith(f"localhost python: {tmp_path / 'no-python'} does not run")
    assert "--python" in problems[0]


def test_port_in_use_is_a_bind_failure() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        report = check.run_checks([HostEntry("127.0.0.1", ("127.0.0.1",))], starting_port=port,
                                  cwd=REPO)
    text = check.format_report(report)
    assert report.status("127.0.0.1", "bind") is check.Status.FAIL, text
    assert "EADDRINUSE" in text and "--starting-port" in text


def test_plan_ranks_repeats_hosts_and_numbers_ports() -> None:
    ranks, findings = check.plan_ranks(
        [HostEntry("a", ("10.0.0.1",)), HostEntry("b", ("10.0.0.2", "fe80::1"))], 2, 5000, 1.0)
    assert findings == []
    assert [(r.rank, r.host, r.addresses) for r in ranks] == [
        (0, "a", ("10.0.0.1:5000",)), (1, "a", ("10.0.0.1:5001",)),
        (2, "b", ("10.0.0.2:5002", "[fe80::1]:5002")), (3, "b", ("10.0.0.2:5003", "[fe80::1]:5003"))]


def test_plan_ranks_reports_unresolvable_hosts() -> None:
    ranks, findings = check.plan_ranks([HostEntry("no-such-host.invalid")], 1, None, 2.0)
    assert ranks[0].addresses == ()
    assert findings[0].status is check.Status.FAIL
    assert "cannot resolve host 'no-such-host.invalid'" in findings[0].detail


def test_format_report_table_matrix_and_problems() -> None:
    report = check.Report(
        hosts=["h1", "h2"], ranks=2,
        findings=[check.Finding("h1", "ssh", check.Status.OK, "ok"),
                  check.Finding("h2", "ssh", check.Status.OK, "ok"),
                  check.Finding("h2", "script", check.Status.FAIL, "/x.py not found", "copy it")],
        links=[check.Link(0, 1, "h1", "h2", "10.0.0.2:5001", "ETIMEDOUT: timed out after 5s"),
               check.Link(1, 0, "h2", "h1", "10.0.0.1:5000", None)],
        seconds=1.0)
    text = check.format_report(report)
    lines = text.splitlines()
    assert lines[0].split() == ["host", "ssh", "python", "ringcomm", "script", "mpirun", "bind", "reach"]
    assert lines[1].split() == ["h1", "ok", "-", "-", "-", "-", "-", "ok"]
    assert lines[2].split() == ["h2", "ok", "-", "-", "FAIL", "-", "-", "FAIL"]
    assert lines[6].split() == ["h1", ".", "FAIL"]
    assert lines[7].split() == ["h2", "ok", "."]
    assert "FAIL h2 script: /x.py not found; hint: copy it" in text
    assert ("FAIL rank 0 on h1 -> rank 1 at 10.0.0.2:5001 on h2: ETIMEDOUT: timed out after 5s; "
            "hint: a firewall drops the traffic") in text
    assert text.endswith("2 host(s), 2 rank(s): 2 problem(s) (1.0s)")


def test_cli_exit_codes(tmp_path: Path, capsys) -> None:
    assert check_main(["--cwd", REPO]) == 0
    assert "no problem(s)" in capsys.readouterr().out
    bad = tmp_path / "hosts.json"
    bad.write_text('[{"ips": ["10.0.0.1"]}]')
    with pytest.raises(SystemExit) as e:
        check_main(["--hostfile", str(bad)])
    assert e.value.code == 2
    assert "missing key 'ssh'" in capsys.readouterr().err


def test_run_checks_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="expected repeat >= 1, got 0"):
        check.run_checks([HostEntry("127.0.0.1")], repeat=0)
    with pytest.raises(ValueError, match="expected backend"):
        check.run_checks([HostEntry("127.0.0.1")], backend="nccl")


def test_missing_cwd_is_named(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope")
    report = check.run_checks([HostEntry("127.0.0.1")], cwd=missing)
    expected = (f"127.0.0.1 python: cannot enter {missing!r}: cd: {missing}: no such directory; "
                "hint: create the directory there or pass --cwd")
    assert report.problems() == [expected]
