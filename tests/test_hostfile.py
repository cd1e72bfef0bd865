"""Tests of hostfile parsing, validation and writing (MLX's JSON formats)."""

from __future__ import annotations

import json

import pytest

from ringcomm import environment
from ringcomm.hosts.hostfile import (
    HostEntry,
    Hostfile,
    HostfileError,
    dump_hostfile,
    load_hostfile,
    parse_env_assignment,
    parse_hostfile,
    write_hostfile,
)


def _write(tmp_path, data, name="hosts.json"):
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def test_list_format(tmp_path):
    path = _write(tmp_path, [{"ssh": "a", "ips": ["10.0.0.1"]}, {"ssh": "b"}])
    hf = load_hostfile(path)
    assert hf == Hostfile(hosts=(HostEntry("a", ("10.0.0.1",)), HostEntry("b", ())))


def test_object_format_with_backend_and_envs(tmp_path):
    data = {"backend": "mpi", "envs": ["A=1", "B=x=y"],
            "hosts": [{"ssh": "a", "ips": ["10.0.0.1", "10.0.1.1"], "rdma": ["x"]}]}
    hf = load_hostfile(_write(tmp_path, data))
    assert hf.backend == "mpi" and hf.envs == (("A", "1"), ("B", "x=y"))
    assert hf.hosts[0].ips == ("10.0.0.1", "10.0.1.1")
    assert load_hostfile(_write(tmp_path, {"envs": {"A": "1"}, "hosts": [{"ssh": "a"}]})).envs == (
        ("A", "1"),)


@pytest.mark.parametrize("data,expected", [
    ("[{", "not valid JSON at line 1"),
    ({"hosts": [{"ssh": "a"}], "backend": "nccl"}, "backend: expected one of ring, mpi, got 'nccl'"),
    ({"host": []}, "missing key 'hosts'"),
    ([], "expected at least one host"),
    (["a"], "hosts[0] is the string 'a'; expected an object"),
    ([{"ssh": "a"}, {"ips": ["1.2.3.4"]}], "hosts[1]: missing key 'ssh'"),
    ([{"ssh": ""}], "hosts[0].ssh: expected a non-empty host name"),
    ([{"ssh": "a", "ips": "1.2.3.4"}], "hosts[0].ips: expected a list of ip addresses"),
    ([{"ssh": "a", "ips": ["1.2.3.4", "nothost"]}], "hosts[0].ips[1]: expected an ip address"),
    ({"hosts": [{"ssh": "a"}], "envs": ["NOEQUALS"]}, "envs[0]: expected KEY=VALUE"),
    ({"hosts": [{"ssh": "a"}], "envs": ["1X=2"]}, "envs[0]: expected a variable name"),
    (42, "expected a list of hosts or an object"),
])
def test_errors_name_file_entry_and_key(tmp_path, data, expected):
    path = _write(tmp_path, data)
    with pytest.raises(HostfileError) as info:
        load_hostfile(path)
    assert str(path) in str(info.value)
    assert expected in str(info.value)


def test_missing_file(tmp_path):
    with pytest.raises(HostfileError, match="does not exist"):
        load_hostfile(tmp_path / "nope.json")


def test_write_round_trip(tmp_path):
    for hf in (Hostfile(hosts=(HostEntry("a", ("10.0.0.1",)),)),
               Hostfile(hosts=(HostEntry("a"),), backend="ring", envs=(("K", "V"),))):
        write_hostfile(hf, tmp_path / "h.json")
        assert load_hostfile(tmp_path / "h.json") == hf
    assert dump_hostfile(Hostfile(hosts=(HostEntry("a"),))).lstrip().startswith("[")


def test_rank_hostfile_round_trip_and_validation(tmp_path):
    ranks = [["127.0.0.1:5000", "127.0.0.1:5001"], ["127.0.0.1:5002", "127.0.0.1:5003"]]
    (tmp_path / "r.json").write_text(environment.dump_rank_hostfile(ranks))
    assert environment.read_rank_hostfile(tmp_path / "r.json") == ranks
    _write(tmp_path, [["127.0.0.1"]], "bad.json")
    with pytest.raises(environment.RankHostfileError, match="entry 0: expecting 'ip:port'"):
        environment.read_rank_hostfile(tmp_path / "bad.json")


def test_parse_env_assignment():
    assert parse_env_assignment("A_1=x=y") == ("A_1", "x=y")
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_env_assignment("A")


def test_parse_hostfile_in_memory_source_name():
    with pytest.raises(HostfileError, match="<memory>"):
        parse_hostfile([{}])
