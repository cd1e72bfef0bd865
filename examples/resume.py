"""Checkpoint and resume: a job that survives a rank's failure under `--max-restarts`.

    ringcomm launch -n 2 --max-restarts 2 examples/resume.py --steps 60 --fail-at 25

Every rank fits the same linear model to its own slice of data, averaging
gradients with `all_sum`. Every `--every` steps rank 0 writes a checkpoint
(weights and step) atomically, then all ranks meet at a barrier. On start, a
job reads the latest checkpoint if there is one; `RINGCOMM_RESTART` (0 on the
first run, 1 after the first restart, ...) says which attempt this is. With
`--fail-at N`, rank 1 crashes at step N on the first attempt only, to show a
restart resuming from the last checkpoint instead of step 0.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import numpy as np

import ringcomm


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--every", type=int, default=10, help="checkpoint every N steps")
    p.add_argument("--fail-at", type=int, default=None, help="rank 1 crashes at this step, once")
    p.add_argument("--checkpoint", type=Path,
                   default=Path(tempfile.gettempdir()) / "ringcomm-resume.npz")
    return p.parse_args()


def save(path: Path, w: np.ndarray, step: int) -> None:
    """Write the checkpoint atomically: a reader sees the old one or the new one, never half."""
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, w=w, step=step)
    os.replace(tmp, path)


def main() -> None:
    args = parse_args()
    world = ringcomm.init()
    rank, size = world.rank(), world.size()
    restart = int(os.environ.get("RINGCOMM_RESTART", "0"))
    rng = np.random.default_rng(rank)
    x = rng.standard_normal((256, 8))
    y = x @ np.arange(1.0, 9.0) + 0.01 * rng.standard_normal(256)

    w, start = np.zeros(8), 0
    if restart == 0 and rank == 0 and args.checkpoint.exists():
        args.checkpoint.unlink()  # a fresh job starts from scratch
    ringcomm.barrier()
    if args.checkpoint.exists():
        saved = np.load(args.checkpoint)
        w, start = saved["w"], int(saved["step"])
    if rank == 0:
        print(f"attempt {restart}: starting at step {start}", flush=True)

    for step in range(start, args.steps):
        if args.fail_at is not None and step == args.fail_at and rank == 1 and restart == 0:
            raise SystemExit(f"rank 1: simulated crash at step {step}")
        grad = x.T @ (x @ w - y) / len(y)
        w -= 0.1 * ringcomm.all_sum(grad) / size
        if (step + 1) % args.every == 0:
            if rank == 0:
                save(args.checkpoint, w, step + 1)
            ringcomm.barrier()  # nobody runs ahead of a checkpoint that may be needed
    loss = float(ringcomm.all_sum(np.array([np.mean((x @ w - y) ** 2)]))[0] / size)
    if rank == 0:
        print(f"attempt {restart}: finished {args.steps} steps, loss {loss:.5f}, "
              f"w[:3] = {np.round(w[:3], 3)}", flush=True)


if __name__ == "__main__":
    main()
