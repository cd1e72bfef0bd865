"""`ringcomm bench`: arguments checked before any rank starts, JSON rows, the PNG plot."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

BENCH = [sys.executable, "-m", "ringcomm", "bench"]
ROW_KEYS = {"op", "ranks", "backend", "size_B", "count", "dtype", "iters", "time_us",
            "algbw_GBps", "busbw_GBps", "path", "core", "steps_per_s"}


def _core_built() -> bool:
    try:
        from ringcomm import _native  # type: ignore[attr-defined]  # noqa: F401
    except ImportError:
        return False
    return True


def _core_runs() -> bool:
    """Whether the compiled core runs here by default (built, and not RINGCOMM_NATIVE=0)."""
    from ringcomm import native

    return native.PATH == "native"


def _bench(*args: str, timeout: float = 60, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*BENCH, *args], capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, check=False, **kw)


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("args", "names"), [
    (["--sizes", "abc"], ["--sizes", "'abc'", "4,64k,16m"]),
    (["--sizes", "4,0"], ["--sizes", "'0'"]),
    (["--sizes", "1.5"], ["--sizes", "'1.5'"]),
    (["--iters", "0"], ["--iters", "'0'"]),
    (["--dtype", "object"], ["--dtype", "'object'", "float32"]),
    (["--dtype", "float33"], ["--dtype", "'float33'"]),
    (["-n", "-2"], ["-n", "'-2'"]),
    (["-n", "two"], ["-n", "'two'"]),
    (["--connections-per-ip", "0"], ["--connections-per-ip"]),
    (["--op", "all_reduce"], ["--op", "'all_reduce'", "all_sum"]),
    (["--plot", "out.jpg"], ["--plot", ".png"]),
    (["--plot", "/no/such/dir/out.png"], ["--plot", "/no/such/dir"]),
    (["--frobnicate"], ["--frobnicate"]),
])
def test_a_bad_argument_exits_2_with_one_line_naming_it_before_any_rank_starts(
        args: list[str], names: list[str]) -> None:
    start = time.monotonic()
    r = _bench(*args)
    assert r.returncode == 2
    assert r.stdout == ""
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr
    for name in names:
        assert name in lines[0]
    # Starting ranks takes seconds; a check made in the command does not.
    assert time.monotonic() - start < 10


@pytest.mark.timeout(60)
def test_plot_without_matplotlib_says_how_to_install_it_in_one_line(tmp_path: Path) -> None:
    code = ("import sys; sys.modules['matplotlib'] = None\n"
            "from ringcomm.bench import main\n"
            f"raise SystemExit(main(['--plot', {str(tmp_path / 'b.png')!r}]))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                       stdin=subprocess.DEVNULL, check=False)
    assert r.returncode == 2
    assert len(r.stderr.splitlines()) == 1, r.stderr
    assert "pip install matplotlib" in r.stderr
    assert not (tmp_path / "b.png").exists()


@pytest.mark.timeout(120)
def test_json_prints_one_checked_row_per_op_and_size_at_two_ranks() -> None:
    r = _bench("-n", "2", "--sizes", "4,4k", "--op", "all_sum,all_gather", "--iters", "3",
               "--json", timeout=100)
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert [(row["op"], row["size_B"]) for row in rows] == [
        ("all_sum", 4), ("all_sum", 4096), ("all_gather", 4), ("all_gather", 4096)]
    for row in rows:
        assert set(row) == ROW_KEYS
        assert (row["ranks"], row["dtype"], row["iters"]) == (2, "float32", 3)
        assert row["count"] == row["size_B"] // 4
        assert row["path"] == "shm-slot"  # two ranks of one host: shared memory
        # The compiled core runs the small reductions where it is built; Python the rest.
        want = "native" if row["op"] == "all_sum" and _core_runs() else "python"
        assert row["core"] == want
        assert row["time_us"] > 0
        assert row["algbw_GBps"] == pytest.approx(row["size_B"] / row["time_us"] / 1e3)
        factor = 1.0 if row["op"] == "all_sum" else 0.5  # 2(p-1)/p and (p-1)/p at p=2
        assert row["busbw_GBps"] == pytest.approx(row["algbw_GBps"] * factor)


@pytest.mark.timeout(120)
def test_sendrecv_is_a_ping_pong_of_ranks_0_and_1_over_the_link_between_them() -> None:
    for transport, path in (("auto", "shm-p2p"), ("tcp", "tcp-p2p")):
        r = _bench("-n", "3", "--sizes", "4,2m", "--op", "sendrecv", "--iters", "3", "--json",
                   timeout=100, env=dict(os.environ, RINGCOMM_TRANSPORT=transport))
        assert r.returncode == 0, r.stderr
        rows = [json.loads(line) for line in r.stdout.splitlines()]
        assert [(row["op"], row["size_B"], row["path"]) for row in rows] == [
            ("sendrecv", 4, path), ("sendrecv", 2 << 20, path)]
        assert all(row["busbw_GBps"] == row["algbw_GBps"] for row in rows)


@pytest.mark.timeout(120)
def test_all_to_all_is_checked_block_by_block_and_takes_direct_links_over_tcp() -> None:
    r = _bench("-n", "3", "--sizes", "12,1m", "--op", "all_to_all", "--iters", "3", "--json",
               timeout=100, env=dict(os.environ, RINGCOMM_TRANSPORT="tcp"))
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert [(row["op"], row["count"] % 3, row["path"]) for row in rows] == [
        ("all_to_all", 0, "tcp-pairs"), ("all_to_all", 0, "tcp-pairs")]
    assert all(row["busbw_GBps"] == pytest.approx(row["algbw_GBps"] * 2 / 3) for row in rows)


@pytest.mark.timeout(120)
def test_the_table_names_the_unit_of_every_column() -> None:
    r = _bench("-n", "2", "--sizes", "4", "--iters", "3", timeout=100)
    assert r.returncode == 0, r.stderr
    header = next(line for line in r.stdout.splitlines() if not line.startswith("#"))
    assert header.split() == ["size_B", "count", "dtype", "time_us", "algbw_GBps", "busbw_GBps",
                              "path", "(core)"]
    assert len(r.stdout.splitlines()) == 3


@pytest.mark.timeout(120)
@pytest.mark.parametrize("native", ["1", "0"])
def test_decode_times_steps_of_100_layer_all_sums_and_one_tiny_one(native: str) -> None:
    if native == "1" and not _core_built():
        pytest.skip("the compiled core is not built here")
    r = _bench("-n", "2", "--op", "decode", "--iters", "3", "--json", timeout=100,
               env=dict(os.environ, RINGCOMM_NATIVE=native))
    assert r.returncode == 0, r.stderr
    (row,) = [json.loads(line) for line in r.stdout.splitlines()]
    assert (row["op"], row["size_B"], row["iters"], row["path"]) == ("decode", 16384, 3,
                                                                      "shm-slot")
    assert row["core"] == ("native" if native == "1" else "python")
    # time_us is the step's time per all_sum: 100 of the size and one of 4 bytes.
    assert row["steps_per_s"] == pytest.approx(1e6 / (101 * row["time_us"]))


@pytest.mark.timeout(150)
def test_plot_writes_a_png_of_the_run(tmp_path: Path) -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        pytest.skip("matplotlib is not installed; pip install matplotlib")
    out = tmp_path / "bench.png"
    r = _bench("-n", "2", "--sizes", "4,64k", "--op", "all_sum,broadcast", "--iters", "3",
               "--plot", str(out), timeout=130)
    assert r.returncode == 0, r.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"wrote {out}" in r.stderr


def _benchmark_module(name: str):  # type: ignore[no-untyped-def]
    import importlib

    root = Path(__file__).resolve().parents[1] / "benchmarks"
    for path in (root, root / "peers"):
        if str(path) not in sys.path:
            sys.path.insert(0, str(path))
    return importlib.import_module(name)


def test_a_peer_line_and_a_bench_json_row_read_back_as_what_was_measured() -> None:
    common = _benchmark_module("_common")
    peers = _benchmark_module("run")
    compare = _benchmark_module("compare")
    line = common.line("gloo", 2, 1 << 20, 0.0025)
    (row,) = peers.parse(f"noise\n{line}\n")
    assert row == peers.Result("gloo", 2, 1 << 20, 2500.0, 0.419, 0.419)
    assert row.line() == line
    rows = compare.parse_bench_json('# header\n{"size_B": 4, "time_us": 3.5}\n')
    assert rows == [{"size_B": 4, "time_us": 3.5}]


def test_the_link_shaping_bucket_holds_half_a_millisecond_and_at_least_one_tso_segment() -> None:
    multihost = _benchmark_module("multihost")
    assert multihost.tbf_argv("10gbit")[-5:] == ["10gbit", "burst", "625000", "latency", "50ms"]
    assert multihost.tbf_argv("1gbit")[10] == str(64 << 10)
