"""Communication overlapped with computation: async all_sum and the GradientReducer.

    ringcomm launch -n 2 benchmarks/overlap.py [--case sleep,numpy,mlp] [--mib 16] [--repeats 15]

- sleep: a 16 MiB all_sum started with async_op=True, then compute that leaves the CPU free
  (a sleep stands in for accelerator work) as long as the all_sum alone takes, then wait. The
  step is compared with max(compute, communication): 1.0 is perfect overlap, 2.0 none.
- numpy: the same with NumPy compute on one thread (float32 matrix products; run it with
  OPENBLAS_NUM_THREADS=1 so each rank uses one core): compute and communication now share the
  rank's core.
- mlp: a torch MLP training step, sized so that backward and gradient averaging take about as
  long. Sequential: backward, then average_gradients. Overlapped: a GradientReducer whose torch
  hooks start each bucket's all_sum during backward, then wait(). Compared as overlapped /
  sequential (below 1 is a gain).

Rank 0 prints one Markdown table; each time is the median over `--repeats` of the slowest rank's
step (every step ends in a barrier). The line above it says which path the all_sum took.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np

import ringcomm


def slowest(fn: Callable[[], None], repeats: int) -> float:
    """Return the median over `repeats` of the slowest rank's time for `fn` (seconds)."""
    times = []
    for _ in range(repeats + 1):
        ringcomm.barrier()
        t = time.perf_counter()
        fn()
        mine = np.array([time.perf_counter() - t])
        times.append(float(ringcomm.all_max(mine)[0]))
    return statistics.median(times[1:])  # the first warms up


def matmuls(seconds: float) -> Callable[[], None]:
    """Return NumPy compute (float32 matrix products) that takes about `seconds` here."""
    a = np.random.default_rng(0).standard_normal((256, 256)).astype(np.float32)
    ringcomm.barrier()  # calibrated while every rank computes, as in the step
    t = time.perf_counter()
    for _ in range(50):
        a @ a
    per = float(ringcomm.all_max(np.array([(time.perf_counter() - t) / 50]))[0])
    n = max(1, round(seconds / per))

    def run() -> None:
        for _ in range(n):
            a @ a
    return run


def overlap_case(kind: str, mib: int, repeats: int) -> list[str]:
    x = np.ones((mib << 20) // 4, dtype=np.float32)
    comm = slowest(lambda: ringcomm.all_sum(x), repeats)
    ringcomm.all_sum(x)
    path = ringcomm.init()._backend.path  # the path the all_sum took
    if kind == "sleep":
        compute = lambda: time.sleep(comm)  # noqa: E731 - the stand-in for accelerator work
        what = f"sleep {comm * 1e3:.1f} ms"
    else:
        compute = matmuls(comm)
        what = "NumPy matmuls, one thread"
    alone = slowest(compute, repeats)

    def step() -> None:
        work = ringcomm.all_sum(x, async_op=True)
        compute()
        work.wait()
    both = slowest(step, repeats)
    best = max(alone, comm)
    return [f"| {kind} ({what}) | {mib} MiB all_sum ({path}) | {comm * 1e3:.2f} | "
            f"{alone * 1e3:.2f} | {both * 1e3:.2f} | {(alone + comm) * 1e3:.2f} | "
            f"{both / best:.2f}x |"]


def mlp_case(repeats: int, width: int, depth: int, batch: int, bucket: int) -> list[str]:
    import torch

    torch.set_num_threads(1)
    torch.manual_seed(0)
    layers: list[torch.nn.Module] = []
    for _ in range(depth):
        layers += [torch.nn.Linear(width, width), torch.nn.ReLU()]
    model = torch.nn.Sequential(*layers, torch.nn.Linear(width, 10))
    data = torch.randn(batch, width)
    target = torch.randint(0, 10, (batch,))
    loss_fn = torch.nn.CrossEntropyLoss()
    params = list(model.parameters())
    nbytes = sum(p.numel() * 4 for p in params)

    def forward_backward() -> None:
        model.zero_grad(set_to_none=False)
        loss_fn(model(data), target).backward()

    def sequential() -> None:
        forward_backward()
        avg = ringcomm.average_gradients([p.grad for p in params], all_reduce_size=bucket)
        for p, g in zip(params, avg):
            p.grad.copy_(g)

    compute = slowest(forward_backward, repeats)
    seq = slowest(sequential, repeats)
    reducer = ringcomm.GradientReducer(params, bucket_bytes=bucket)

    def overlapped() -> None:
        forward_backward()
        reducer.wait()
    over = slowest(overlapped, repeats)
    reducer.close()
    return [f"| torch MLP {depth}x{width} ({nbytes / 2**20:.1f} MiB of gradients), batch "
            f"{batch}, {bucket >> 20} MiB buckets | {compute * 1e3:.2f} | {seq * 1e3:.2f} | "
            f"{over * 1e3:.2f} | {over / seq:.2f}x |"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--case", default="sleep,numpy,mlp")
    ap.add_argument("--mib", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--width", type=int, default=1024)
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--bucket-mib", default="2", help="bucket sizes to try, e.g. 2,4,8")
    args = ap.parse_args()
    world = ringcomm.init()
    cases = args.case.split(",")
    rows: list[str] = []
    for kind in ("sleep", "numpy"):
        if kind in cases:
            rows += overlap_case(kind, args.mib, args.repeats)
    mlp = [row for mib in args.bucket_mib.split(",") if "mlp" in cases
           for row in mlp_case(args.repeats, args.width, args.depth, args.batch, int(mib) << 20)]
    if world.rank() == 0:
        print(f"p={world.size()}, backend {world.backend}; ms, median over {args.repeats} steps "
              "of the slowest rank")
        if rows:
            print("| compute | communication | comm alone | compute alone | overlapped step | "
                  "sequential (sum) | step / max(compute, comm) |")
            print("|---|---|---|---|---|---|---|")
            print("\n".join(rows))
        if mlp:
            print("| model | forward+backward alone | sequential step (backward, then "
                  "average_gradients) | overlapped step (GradientReducer) | overlapped / "
                  "sequential |")
            print("|---|---|---|---|---|")
            print("\n".join(mlp))


if __name__ == "__main__":
    main()
