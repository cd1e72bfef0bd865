"""ringcomm's torch.distributed backend beside gloo: dist.all_reduce and DDP steps/s.

    python benchmarks/torch_ddp.py                 # p=2 and p=4 on this machine
    python benchmarks/torch_ddp.py -n 2 --quick    # a short run
    sudo python benchmarks/torch_ddp.py --hosts 2 [--rate 10gbit] [--quick]

One job per rank count (``ringcomm launch``); inside it ringcomm is torch's default group,
gloo a group of every rank beside it, and `noop` a Python process group whose all_reduce does
nothing (what torch's own dispatch of a Python backend costs). Printed, in one run:

- dist.all_reduce of float32 tensors, in place, at 4 B, 16 KiB, 64 KiB, 1 MiB and 16 MiB
  through the ringcomm backend, through gloo, ringcomm called directly
  (`ringcomm.all_sum(tensor)`, and on a NumPy array: its fast path), and the no-op backend;
  the timing rule of docs/benchmarks.md
  (3 untimed calls, then max(5, min(200, 2e8/size)) timed calls with a barrier before each
  over 1 MiB, rank 0's median, results checked);
- DDP training steps/s on (a) 50 linear layers of 200x200 (2.0 M parameters) and (b) 4 linear
  layers of 3536x3536 (50 M parameters), SGD, a batch of 8 rows per rank, one intra-op thread
  per rank, and the share of a step spent communicating: 1 - (step under no_sync) / step.

`--hosts 2` runs the same job (p=2) with one rank on each of two test hosts: network
namespaces with their own hostname and sshd whose egress is shaped by tc to `--rate`
(benchmarks/testhosts.py, as benchmarks/multihost.py builds them), started by
`ringcomm launch --hosts` over ssh. torch's env:// store is then served by rank 0 on host 1's
address (ringcomm.torch's env:// under ringcomm's launcher); gloo is held to the hosts' eth0
(GLOO_SOCKET_IFNAME) and ringcomm crosses the link over TCP. Needs root; the hosts, their
processes and any shared-memory segment are removed on exit, Ctrl-C and SIGTERM included.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SIZES = [4, 16 << 10, 64 << 10, 1 << 20, 16 << 20]


def iterations(nbytes: int) -> int:
    return max(5, min(200, int(2e8 // max(nbytes, 1))))


# -- rank side --------------------------------------------------------------------------------


def _noop_backend() -> None:
    import torch
    import torch.distributed as dist

    base: object = dist.ProcessGroup

    class Done(dist.Work):  # type: ignore[misc]
        def wait(self, timeout: object = None) -> bool:
            return True

    class Noop(base):  # type: ignore[misc, valid-type]
        def getBackendName(self) -> str:
            return "noop"

        def allreduce(self, tensors: list[torch.Tensor], opts: object = None) -> dist.Work:
            return Done()

    def create(opts: object, _: object = None) -> object:
        return Noop(opts.group_rank, opts.group_size)  # type: ignore[attr-defined]

    dist.Backend.register_backend("noop", create, extended_api=True, devices=["cpu"])


def _median_us(fn, refill, nbytes: int, barrier) -> float:  # type: ignore[no-untyped-def]
    for _ in range(3):
        refill()
        fn()
    times = []
    for _ in range(iterations(nbytes)):
        refill()
        if nbytes > 1 << 20:
            barrier()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e6


def _allreduce_row(nbytes: int, p: int, groups: dict, world: object,
                   bar: object) -> dict[str, float]:
    import numpy as np
    import torch
    import torch.distributed as dist

    import ringcomm

    n = nbytes // 4
    x = torch.ones(n)
    a = np.ones(n, dtype=np.float32)
    calls = {
        "ringcomm": lambda: dist.all_reduce(x, group=groups["ringcomm"]),
        "gloo": lambda: dist.all_reduce(x, group=groups["gloo"]),
        "direct": lambda: ringcomm.all_sum(x, group=world),
        "numpy": lambda: ringcomm.all_sum(a, group=world),
        "noop": lambda: dist.all_reduce(x, group=groups["noop"]),
    }
    row = {}
    for name, call in calls.items():
        row[name] = _median_us(call, lambda: x.fill_(1), nbytes, bar)
        if name in ("ringcomm", "gloo"):
            assert float(x[0]) == p, (name, float(x[0]))
    return row


def rank_main(quick: bool) -> None:
    import torch
    import torch.distributed as dist

    import ringcomm
    import ringcomm.torch  # registers the backend

    torch.set_num_threads(1)
    _noop_backend()
    dist.init_process_group("ringcomm")
    rank, p = dist.get_rank(), dist.get_world_size()
    ours = dist.distributed_c10d._get_default_group()
    gloo = dist.new_group(backend="gloo")
    noop = dist.new_group(backend="noop")
    world = ringcomm.init()
    sizes = SIZES[:3] if quick else SIZES

    def bar() -> None:
        dist.barrier(group=gloo)

    for nbytes in sizes:
        row = _allreduce_row(nbytes, p, {"ringcomm": None, "gloo": gloo, "noop": noop},
                             world, bar)
        if rank == 0:
            print("ALLREDUCE " + " ".join(f"{k}={v:.2f}" for k, v in row.items())
                  + f" p={p} bytes={nbytes}", flush=True)
            print(f"PATH bytes={nbytes} path={world._backend.path}", flush=True)
    for label in ("a", "b"):
        for name, group in (("ringcomm", ours), ("gloo", gloo)):
            rate, share = _ddp(label, group, quick)
            if rank == 0:
                print(f"DDP model={label} backend={name} p={p} steps_per_s={rate:.3f} "
                      f"comm_share={share:.3f}", flush=True)
    dist.barrier(group=gloo)
    sys.stdout.flush()
    os._exit(0)  # torch's gloo teardown can deadlock on the GIL: leave without it


def _ddp(label: str, group: object, quick: bool) -> tuple[float, float]:
    import torch
    import torch.distributed as dist
    from torch import nn

    torch.manual_seed(0)
    if label == "a":
        model = nn.Sequential(*[nn.Linear(200, 200) for _ in range(50)])
        width, steps = 200, 10 if quick else 40
    else:
        model = nn.Sequential(*[nn.Linear(3536, 3536) for _ in range(4)])
        width, steps = 3536, 3 if quick else 8
    ddp = nn.parallel.DistributedDataParallel(model, process_group=group)
    opt = torch.optim.SGD(ddp.parameters(), lr=1e-4)
    x = torch.randn(8, width)

    def step() -> None:
        opt.zero_grad()
        ddp(x).square().mean().backward()
        opt.step()

    def rate(n: int) -> float:
        for _ in range(2):
            step()
        dist.barrier(group=group)
        t0 = time.perf_counter()
        for _ in range(n):
            step()
        dist.barrier(group=group)
        return n / (time.perf_counter() - t0)

    with_comm = rate(steps)
    with ddp.no_sync():
        without = rate(steps)
    return with_comm, max(0.0, 1.0 - without ** -1 / with_comm ** -1) if with_comm else 0.0


# -- driver -----------------------------------------------------------------------------------


def run_hosts(rate: str, quick: bool) -> tuple[list[str], list[str]]:
    """Run the p=2 job with one rank on each of two test hosts shaped to `rate`; return its
    result lines and ringcomm's paths (PATH lines)."""
    import testhosts

    program = [sys.executable, str(Path(__file__).resolve()), "--rank-side"] + \
        (["--quick"] if quick else [])
    with testhosts.shaped("torch_ddp", rate) as cluster:
        code, out, err = testhosts.launch(cluster, program, timeout=1800,
                                          envs={"GLOO_SOCKET_IFNAME": "eth0"})
    if code != 0 or "processes left on the hosts" in err:
        raise SystemExit(f"the 2-host job failed (exit {code}):\n{err[-3000:]}")
    lines = out.splitlines()
    return ([ln for ln in lines if ln.startswith(("ALLREDUCE", "DDP"))],
            [ln for ln in lines if ln.startswith("PATH")])


def run_job(p: int, quick: bool) -> list[str]:
    argv = [sys.executable, "-m", "ringcomm", "launch", "-n", str(p), sys.executable,
            str(Path(__file__).resolve()), "--rank-side"] + (["--quick"] if quick else [])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        x for x in (str(ROOT), os.environ.get("PYTHONPATH", "")) if x))
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=1800)
    if done.returncode:
        raise SystemExit(f"the p={p} job failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return [ln for ln in done.stdout.splitlines() if ln.startswith(("ALLREDUCE", "DDP"))]


def _fields(line: str) -> dict[str, str]:
    return dict(kv.split("=", 1) for kv in line.split()[1:])


def report(lines: list[str]) -> None:
    print("# dist.all_reduce float32, in place: time_us is rank 0's median; busbw in GB/s "
          "(1e9 B/s) = size/time * 2(p-1)/p")
    print("# ringcomm_us: through the backend; direct_us: ringcomm.all_sum(tensor); numpy_us: "
          "ringcomm.all_sum(ndarray);\n# noop_us: torch's dispatch to a Python group doing "
          "nothing; added_us = ringcomm_us - numpy_us")
    print(f"{'p':>2} {'size_B':>9} {'ringcomm_us':>12} {'gloo_us':>10} {'direct_us':>10} "
          f"{'numpy_us':>9} {'noop_us':>8} {'added_us':>9} {'vs_gloo':>8} {'busbw_rc':>9} "
          f"{'busbw_gloo':>10}")
    for ln in lines:
        if not ln.startswith("ALLREDUCE"):
            continue
        f = _fields(ln)
        p, n = int(f["p"]), int(f["bytes"])
        rc, gl, direct, npy, noop = (float(f[k]) for k in ("ringcomm", "gloo", "direct",
                                                           "numpy", "noop"))
        bw_rc, bw_gloo = (n / (us * 1e-6) * 2 * (p - 1) / p / 1e9 for us in (rc, gl))
        print(f"{p:>2} {n:>9} {rc:>12.2f} {gl:>10.2f} {direct:>10.2f} {npy:>9.2f} {noop:>8.2f} "
              f"{rc - npy:>9.2f} {gl / rc:>7.2f}x {bw_rc:>9.3f} {bw_gloo:>10.3f}")
    print()
    print("# DDP training steps/s (SGD, 8 rows per rank, one thread per rank); comm_share = "
          "1 - step time under no_sync / step time")
    print(f"{'p':>2} {'model':>28} {'ringcomm':>9} {'gloo':>9} {'ratio':>7} "
          f"{'comm_rc':>8} {'comm_gloo':>9}")
    ddp = [_fields(ln) for ln in lines if ln.startswith("DDP")]
    names = {"a": "(a) 50 x Linear(200), 2.0 M", "b": "(b) 4 x Linear(3536), 50 M"}
    for f in ddp:
        if f["backend"] != "ringcomm":
            continue
        g = next(x for x in ddp if x["backend"] == "gloo" and x["p"] == f["p"]
                 and x["model"] == f["model"])
        rc, gl = float(f["steps_per_s"]), float(g["steps_per_s"])
        print(f"{f['p']:>2} {names[f['model']]:>28} {rc:>9.2f} {gl:>9.2f} {rc / gl:>6.2f}x "
              f"{float(f['comm_share']):>8.2f} {float(g['comm_share']):>9.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-n", default="2,4", help="rank counts, comma-separated (default 2,4)")
    ap.add_argument("--quick", action="store_true", help="fewer sizes and steps (a check run)")
    ap.add_argument("--hosts", type=int, choices=(2,),
                    help="run p=2 with one rank on each of 2 test hosts instead (root)")
    ap.add_argument("--rate", default="10gbit", help="tc rate of each test host's link "
                    "(with --hosts; default 10gbit)")
    ap.add_argument("--rank-side", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.rank_side:
        rank_main(args.quick)
        return
    if args.hosts:
        import testhosts

        if os.geteuid() != 0:
            ap.error("--hosts builds network namespaces: run it as root")
        try:
            lines, paths = run_hosts(args.rate, args.quick)
        except testhosts.HostsUnavailable as e:
            raise SystemExit(str(e)) from None
        except argparse.ArgumentTypeError as e:
            ap.error(str(e))
        except KeyboardInterrupt:
            print("torch_ddp: interrupted; the test hosts were removed", file=sys.stderr)
            raise SystemExit(130) from None
        print(f"# 2 test hosts, one rank each (p=2), each host's egress shaped to {args.rate} "
              "(tc tbf); gloo over eth0, ringcomm: "
              + ", ".join(f"{f['bytes']} B {f['path']}" for f in map(_fields, paths)))
        report(lines)
        return
    lines: list[str] = []
    for p in (int(x) for x in args.n.split(",")):
        lines += run_job(p, args.quick)
    report(lines)


if __name__ == "__main__":
    main()
