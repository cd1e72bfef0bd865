"""The alpha-beta model of a small all_sum: fitted here, checked at p = 2-8, simulated to p = 256.

    python benchmarks/model.py fit      # measure, fit c, alpha, beta, sigma; write model.json
    python benchmarks/model.py check    # predict p = 8 (4 loopback hosts x 2) and measure it
    python benchmarks/model.py simulate # ring vs recursive doubling vs hierarchical to p = 256

A small all-reduce of n bytes per rank costs

    T = c + steps * alpha + received * beta   (+ 2 sigma when hierarchical)

where c is the fixed cost of one call (the interpreter's path, header, check,
reduction), alpha the cost of one exchange over sockets (a send, the wait
for the peer's message, its receipt), beta the cost of one byte received,
and sigma one shared-memory step among a host's ranks (post, wait, read).
Each algorithm has its own steps and bytes (n' = n + the 128-byte header):

    ring (latency path)   p - 1 steps       receives (p - 1) n'
    recursive doubling    log2 p steps      receives (p - 1) n'
    hierarchical          2 sigma + the across algorithm over h = p / l hosts
                          (l ranks per host reduce and share through memory)

So doubling never loses to the ring (same bytes, fewer steps) where p is a
power of two, and the hierarchical path trades p - 1 socket steps for two
memory steps and h - 1 (ring) or log2 h (doubling) socket steps.

c and alpha depend on whether a waiting rank may spin (every rank has a
core: c, alpha_spin) or must block and be woken (more ranks than cores:
c_block, alpha_block); this machine has 2 cores, so p = 2 measures the first
and p = 4 and p = 8 the second. `fit` measures, with RINGCOMM_TRANSPORT=tcp:
p = 2 at 4 B to 64 KiB (c + alpha_spin and beta, least squares), a raw
socket exchange between two processes (alpha_spin alone, hence c), p = 4
with RINGCOMM_ALGORITHM=ring (3 steps) and doubling (2 steps) at 4 B (their
difference is alpha_block, and with it c_block), and the shared-memory slot
path at p = 2 and p = 4 (sigma, sigma_block). The socket steps of the ring
and of doubling are Python's loop, so the p = 2 fit runs with RINGCOMM_NATIVE=0;
a group of two takes the compiled core's exchange instead, whose fixed cost
c_pair comes from p = 2 at 4 B with the core. Where ranks block, their costs grow
with the ranks per core (a woken rank waits behind the runnable ones): the
model scales c_block, alpha_block and sigma_block by p / 4. `check` predicts
the three algorithms at p = 8 on 4 loopback
hosts of 2 ranks and measures them. `simulate` prints the model to p = 256
for a cluster whose ranks each have a core (alpha_spin), l ranks per host.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_PARAMS = HERE / "model.json"
HEADER = 128
FIT_SIZES = [4, 4096, 16384, 65536]


# -- the model ---------------------------------------------------------------------------------

def steps(algorithm: str, p: int) -> int:
    """Return the socket exchanges of `algorithm` at p ranks (p - 1 or log2 p)."""
    if p <= 1:
        return 0
    if algorithm == "ring":
        return p - 1
    if algorithm == "doubling":
        if p & (p - 1):
            raise ValueError(f"recursive doubling needs a power of two ranks, got {p}")
        return int(math.log2(p))
    raise ValueError(f"unknown algorithm {algorithm!r}")


def predict(params: dict, algorithm: str, p: int, n: int, alpha: str = "alpha_spin",
            per_host: int = 1, across: str = "doubling") -> float:
    """Return the model's time in µs of a small all_sum of `n` bytes per rank.

    `algorithm` is ring, doubling or hierarchical (then `per_host` ranks per host, hosts
    joined by `across`); `alpha` names the regime: alpha_spin or alpha_block.
    """
    b, m = params["beta"], n + HEADER
    if alpha == "alpha_block":
        # Ranks that outnumber the cores: a woken rank waits for a core, behind the others
        # runnable; fitted at p = 4, the blocked costs grow with the ranks per core.
        load = p / params["fitted_block_p"]
        c, a, sigma = (params[k] * load for k in ("c_block", "alpha_block", "sigma_block"))
    else:
        c, a, sigma = params["c"], params[alpha], params["sigma"]
        if p == 2 and algorithm != "hierarchical" and "c_pair" in params:
            c = params["c_pair"]  # two ranks: one call of the compiled core's exchange
    if algorithm == "hierarchical":
        h = p // per_host
        return c + 2 * sigma + steps(across, h) * a + (h - 1) * m * b
    return c + steps(algorithm, p) * a + (p - 1) * m * b


def best(params: dict, p: int, n: int, per_host: int) -> str:
    """Return the algorithm the model picks (what the backend does: the fewest steps)."""
    options = {"ring": predict(params, "ring", p, n)}
    if p & (p - 1) == 0:
        options["doubling"] = predict(params, "doubling", p, n)
    if per_host > 1 and p % per_host == 0:
        options["hierarchical"] = predict(params, "hierarchical", p, n, per_host=per_host,
                                          across="doubling" if (p // per_host) & (p // per_host - 1) == 0
                                          else "ring")
    return min(options, key=options.__getitem__)


# -- measuring ---------------------------------------------------------------------------------

def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def measure(p: int, sizes: list[int], env: dict[str, str], hosts: list[int] | None = None,
            iters: int = 2000, timeout: float = 600) -> list[dict]:
    """Run `ringcomm bench` (all_sum, float32) on p local ranks, or on loopback hosts of
    hosts[i] ranks each (127.0.0.1, 127.0.0.2, ...); return rank 0's rows."""
    environ = {**os.environ, **env}
    args = ["--json", "--op", "all_sum", "--sizes", ",".join(map(str, sizes)),
            "--iters", str(iters)]
    if hosts is None:
        out = subprocess.run([sys.executable, "-m", "ringcomm", "bench", "-n", str(p), *args],
                             env=environ, capture_output=True, text=True, timeout=timeout)
        if out.returncode != 0:
            raise RuntimeError(f"ringcomm bench -n {p} failed: {out.stderr[-2000:]}")
        return [json.loads(ln) for ln in out.stdout.splitlines() if ln.startswith("{")]
    ips = [f"127.0.0.{h + 1}" for h, k in enumerate(hosts) for _ in range(k)]
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump([[f"{ip}:{_free_port(ip)}"] for ip in ips], f)
    token = secrets.token_hex(8)
    procs = []
    try:
        for r in range(len(ips)):
            e = dict(environ, RINGCOMM_RANK=str(r), RINGCOMM_HOSTFILE=f.name, RINGCOMM_TOKEN=token)
            procs.append(subprocess.Popen([sys.executable, "-m", "ringcomm.bench", *args], env=e,
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                          text=True))
        outs = [pr.communicate(timeout=timeout) for pr in procs]
    finally:
        for pr in procs:
            if pr.poll() is None:
                pr.kill()
                pr.wait()
        os.unlink(f.name)
    if any(pr.returncode for pr in procs):
        raise RuntimeError(f"bench on hosts {hosts} failed: "
                           + " | ".join(err[-500:] for _, err in outs if err))
    return [json.loads(ln) for ln in outs[0][0].splitlines() if ln.startswith("{")]


def raw_exchange(nbytes: int = 4 + HEADER, iters: int = 20000) -> float:
    """Return the µs of one exchange of `nbytes` each way between two processes over a loopback
    TCP connection, both sending then polling for the other's bytes: alpha_spin by itself."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    code = f"""
import socket, sys, time
s = socket.create_connection(("127.0.0.1", {port}))
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
msg, buf = b"x" * {nbytes}, bytearray({nbytes})
for _ in range({iters} + 1000):
    s.send(msg)
    got = 0
    while got < {nbytes}:
        try:
            got += s.recv_into(memoryview(buf)[got:], {nbytes} - got, socket.MSG_DONTWAIT)
        except BlockingIOError:
            pass
"""
    child = subprocess.Popen([sys.executable, "-c", code])
    try:
        s, _ = listener.accept()
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        msg, buf = b"x" * nbytes, bytearray(nbytes)
        t = 0.0
        for k in range(iters + 1000):
            if k == 1000:
                t = time.perf_counter()
            s.send(msg)
            got = 0
            while got < nbytes:
                try:
                    got += s.recv_into(memoryview(buf)[got:], nbytes - got, socket.MSG_DONTWAIT)
                except BlockingIOError:
                    pass
        return (time.perf_counter() - t) / iters * 1e6
    finally:
        child.wait(timeout=60)
        listener.close()


def _line(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least squares: return (intercept, slope)."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    return my - slope * mx, slope


def fit(iters: int) -> dict:
    # The ring's and doubling's steps are Python's socket loop: c and beta come from p=2 on
    # that path; the compiled core's exchange of two ranks is fitted apart (c_pair).
    tcp = {"RINGCOMM_TRANSPORT": "tcp", "RINGCOMM_NATIVE": "0"}
    rows = measure(2, FIT_SIZES, tcp, iters=iters)
    intercept, beta = _line([r["size_B"] + HEADER for r in rows], [r["time_us"] for r in rows])
    ring4 = measure(4, [4], {**tcp, "RINGCOMM_ALGORITHM": "ring"}, iters=iters)[0]
    dbl4 = measure(4, [4], {**tcp, "RINGCOMM_ALGORITHM": "doubling"}, iters=iters)[0]
    m = 4 + HEADER
    alpha_block = ring4["time_us"] - dbl4["time_us"]  # 3 steps against 2, same bytes
    c_block = dbl4["time_us"] - 2 * alpha_block - 3 * m * beta
    alpha_spin = raw_exchange()
    pair = measure(2, [4], {"RINGCOMM_TRANSPORT": "tcp"}, iters=iters)[0]
    shm = measure(2, [4], {}, iters=iters)[0]
    shm4 = measure(4, [4], {}, iters=iters)[0]
    params = {
        "c": round(intercept - alpha_spin, 2), "alpha_spin": round(alpha_spin, 2),
        "c_pair": round(pair["time_us"] - alpha_spin - m * beta, 2),
        "c_block": round(c_block, 2), "alpha_block": round(alpha_block, 2),
        "beta": round(beta, 6),
        "sigma": round(shm["time_us"], 2), "sigma_block": round(shm4["time_us"], 2),
        "fitted_block_p": 4, "cores": len(os.sched_getaffinity(0)),
        "measured": {"tcp p=2": {r["size_B"]: r["time_us"] for r in rows},
                     "tcp p=4 ring 4 B": ring4["time_us"], "tcp p=4 doubling 4 B": dbl4["time_us"],
                     "shm p=2 4 B": shm["time_us"], "shm p=4 4 B": shm4["time_us"],
                     "tcp p=2 4 B, the core's exchange": pair["time_us"],
                     "paths": [ring4["path"], dbl4["path"], shm["path"], pair["path"]]},
    }
    return params


def check(params: dict, iters: int) -> list[tuple[str, int, float, float]]:
    """Return (algorithm, steps, predicted, measured) at p = 8: 4 loopback hosts x 2 ranks."""
    out = []
    for name, env, alg in (
            ("flat ring", {"RINGCOMM_TRANSPORT": "tcp", "RINGCOMM_ALGORITHM": "ring"}, "ring"),
            ("flat doubling", {"RINGCOMM_TRANSPORT": "tcp", "RINGCOMM_ALGORITHM": "doubling"},
             "doubling"),
            ("hierarchical (auto)", {}, "hierarchical")):
        row = measure(8, [4], env, hosts=[2, 2, 2, 2], iters=iters)[0]
        pred = predict(params, alg, 8, 4, alpha="alpha_block", per_host=2)
        n_steps = steps("doubling", 4) if alg == "hierarchical" else steps(alg, 8)
        out.append((f"{name} [{row['path']}]", n_steps, pred, row["time_us"]))
    return out


def simulate(params: dict, per_host: int, n: int) -> str:
    lines = [f"model: small all_sum of {n} B per rank, every rank with a core (alpha_spin = "
             f"{params['alpha_spin']} µs), {per_host} ranks per host for hierarchical; µs",
             "| p | ring steps | ring | doubling steps | doubling | hierarchical steps | "
             "hierarchical | chosen |", "|---|---|---|---|---|---|---|---|"]
    p = 2
    while p <= 256:
        h = max(1, p // per_host)
        hier = predict(params, "hierarchical", p, n, per_host=per_host) if p >= per_host else None
        lines.append(
            f"| {p} | {steps('ring', p)} | {predict(params, 'ring', p, n):.1f} | "
            f"{steps('doubling', p)} | {predict(params, 'doubling', p, n):.1f} | "
            + (f"2 shm + {steps('doubling', h)} | {hier:.1f}" if hier is not None else "- | -")
            + f" | {best(params, p, n, per_host)} |")
        p *= 2
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=("fit", "check", "simulate"))
    ap.add_argument("--params", type=Path, default=DEFAULT_PARAMS,
                    help=f"the fitted parameters (default {DEFAULT_PARAMS.name} here)")
    ap.add_argument("--iters", type=int, default=2000, help="timed calls per measurement")
    ap.add_argument("--per-host", type=int, default=8, help="ranks per host (simulate)")
    ap.add_argument("--bytes", type=int, default=4, help="bytes per rank (simulate)")
    args = ap.parse_args()
    if args.what == "fit":
        params = fit(args.iters)
        args.params.write_text(json.dumps(params, indent=1) + "\n")
        print(json.dumps(params, indent=1))
        return 0
    if not args.params.exists():
        ap.error(f"{args.params} does not exist; run `python benchmarks/model.py fit` first")
    params = json.loads(args.params.read_text())
    if args.what == "simulate":
        print(simulate(params, args.per_host, args.bytes))
        return 0
    rows = check(params, args.iters)
    print("p = 8 (4 loopback hosts x 2 ranks, 2 cores: alpha_block), 4-byte all_sum, µs")
    print("| algorithm | socket steps | model | measured | measured / model |")
    print("|---|---|---|---|---|")
    for name, n_steps, pred, got in rows:
        print(f"| {name} | {n_steps} | {pred:.1f} | {got:.1f} | {got / pred:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
