"""Train a small MLP on scikit-learn's digits, data-parallel over every rank.

    python examples/train_digits.py                      # one process
    ringcomm launch -n 4 examples/train_digits.py        # four ranks, same result

Pure NumPy with hand-written backprop. Every rank builds the same model and
the same shuffled global batches from one seed; rank r trains on its slice of
each global batch, and `ringcomm.average_gradients` turns the per-rank mean
gradients into the full-batch mean gradient. With `--overlap` a
`ringcomm.GradientReducer` starts averaging each layer's gradients as soon as
backprop has computed them, while it goes on with the layers below. With float64 and a global batch
that divides evenly among the ranks, N ranks follow the same trajectory as
one process, up to rounding.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import zlib
from collections.abc import Callable

import numpy as np
from sklearn.datasets import load_digits

import ringcomm

Params = dict[str, np.ndarray]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--batch-size", type=int, default=96, help="global batch, split among ranks")
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print each rank's result as a JSON line")
    p.add_argument("--overlap", action="store_true",
                   help="average each gradient while backprop computes the next ones "
                        "(ringcomm.GradientReducer) instead of all of them afterwards")
    return p.parse_args(argv)


def load(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Return (x_train, y_train, x_test, y_test): 80/20 split, pixels scaled to [0, 1]."""
    x, y = load_digits(return_X_y=True)
    order = np.random.default_rng(seed).permutation(len(x))
    x, y = x[order] / 16.0, y[order]
    n_test = len(x) // 5
    return x[n_test:], y[n_test:], x[:n_test], y[:n_test]


def init_params(n_in: int, n_hidden: int, n_out: int, seed: int) -> Params:
    rng = np.random.default_rng(seed + 1)
    return {
        "w1": rng.normal(0, 1 / np.sqrt(n_in), (n_in, n_hidden)),
        "b1": np.zeros(n_hidden),
        "w2": rng.normal(0, 1 / np.sqrt(n_hidden), (n_hidden, n_out)),
        "b2": np.zeros(n_out),
    }


def forward(p: Params, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return (hidden activations, class probabilities)."""
    a = np.tanh(x @ p["w1"] + p["b1"])
    z = a @ p["w2"] + p["b2"]
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return a, e / e.sum(axis=1, keepdims=True)


def loss_and_grads(p: Params, x: np.ndarray, y: np.ndarray,
                   produced: Callable[[str, np.ndarray], None] | None = None,
                   ) -> tuple[float, int, Params]:
    """Return (summed cross-entropy, correct predictions, gradients of the mean loss).

    `produced(name, grad)` is called as soon as each gradient is computed, last layer first.
    """
    a, prob = forward(p, x)
    n = len(x)
    loss = -np.log(prob[np.arange(n), y] + 1e-12).sum()
    correct = int((prob.argmax(axis=1) == y).sum())
    dz = prob
    dz[np.arange(n), y] -= 1.0
    dz /= n
    grads = {"b2": dz.sum(axis=0), "w2": a.T @ dz}
    if produced is not None:
        produced("b2", grads["b2"])
        produced("w2", grads["w2"])
    da = (dz @ p["w2"].T) * (1.0 - a * a)
    grads["b1"] = da.sum(axis=0)
    grads["w1"] = x.T @ da
    if produced is not None:
        produced("b1", grads["b1"])
        produced("w1", grads["w1"])
    return float(loss), correct, grads


def checksum(p: Params) -> int:
    """Return a CRC of every parameter's bytes: equal on two ranks only if the weights are."""
    crc = 0
    for name in sorted(p):
        crc = zlib.crc32(np.ascontiguousarray(p[name]).tobytes(), crc)
    return crc


class Progress:
    """A one-line progress bar on a terminal; one plain line per epoch on a pipe."""

    def __init__(self, enabled: bool, width: int = 30) -> None:
        self.enabled, self.width = enabled, width
        self.tty = enabled and sys.stdout.isatty()

    def step(self, label: str, done: int, total: int) -> None:
        if self.tty:
            fill = self.width * done // total
            bar = "#" * fill + "." * (self.width - fill)
            print(f"\r{label} [{bar}] {done}/{total}", end="", flush=True)

    def end(self, label: str, text: str) -> None:
        if self.enabled:
            bar = "#" * self.width
            print(f"\r{label} [{bar}] {text}", flush=True)


def train(args: argparse.Namespace) -> dict[str, object]:
    world = ringcomm.init()
    rank, size = world.rank(), world.size()
    if args.batch_size % size:
        raise SystemExit(
            f"--batch-size {args.batch_size} must divide evenly among {size} ranks; "
            f"pick a multiple of {size}"
        )
    local = args.batch_size // size
    x_train, y_train, x_test, y_test = load(args.seed)
    params = init_params(x_train.shape[1], args.hidden, 10, args.seed)
    # Same seed on every rank already gives the same weights; broadcast makes it a rule.
    params = ringcomm.tree_map(lambda w: ringcomm.broadcast(w, 0), params)
    velocity = ringcomm.tree_map(np.zeros_like, params)
    steps = len(x_train) // args.batch_size
    show = rank == 0
    progress = Progress(show)
    if show:
        print(
            f"digits: {size} rank{'s' if size > 1 else ''} ({world.backend}), "
            f"MLP 64-{args.hidden}-10, {len(x_train)} train / {len(x_test)} test, "
            f"global batch {args.batch_size} ({local} per rank), {args.epochs} epochs",
            flush=True,
        )
    names = ["w1", "b1", "w2", "b2"]  # forward order
    reducer = ringcomm.GradientReducer([params[k] for k in names]) if args.overlap else None

    def produced(name: str, grad: np.ndarray) -> None:
        assert reducer is not None
        reducer.ready(names.index(name), grad)  # its bucket's all_sum starts when it is full
    order_rng = np.random.default_rng(args.seed + 2)
    stats = np.zeros(3)
    start = time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        t0 = time.perf_counter()
        order = order_rng.permutation(len(x_train))
        stats[:] = 0.0  # summed loss, correct, samples over this rank's slices
        label = f"epoch {epoch:3d}/{args.epochs}"
        for s in range(steps):
            batch = order[s * args.batch_size:(s + 1) * args.batch_size]
            mine = batch[rank * local:(rank + 1) * local]
            if reducer is None:
                loss, correct, grads = loss_and_grads(params, x_train[mine], y_train[mine])
                grads = ringcomm.average_gradients(grads)
            else:
                loss, correct, _ = loss_and_grads(params, x_train[mine], y_train[mine], produced)
                grads = dict(zip(names, reducer.wait()))
            for k in params:
                velocity[k] = args.momentum * velocity[k] + grads[k]
                params[k] -= args.lr * velocity[k]
            stats += (loss, correct, len(mine))
            progress.step(label, s + 1, steps)
        total = ringcomm.all_sum(stats)
        rate = total[2] / (time.perf_counter() - t0)
        progress.end(
            label,
            f"loss {total[0] / total[2]:.4f}  acc {total[1] / total[2]:.3f}  "
            f"{rate:8.0f} samples/s  {size} rank{'s' if size > 1 else ''}",
        )
    elapsed = time.perf_counter() - start
    final_loss = float(total[0] / total[2])

    # Test accuracy: every rank scores its share of the test set; the counts are summed.
    share = np.array_split(np.arange(len(x_test)), size)[rank]
    _, prob = forward(params, x_test[share])
    hits = ringcomm.all_sum(np.array([(prob.argmax(axis=1) == y_test[share]).sum(), len(share)]))
    test_acc = float(hits[0] / hits[1])

    crc = checksum(params)
    summed = int(ringcomm.all_sum(np.array([crc], dtype=np.int64))[0])
    identical = bool(ringcomm.all_min(np.array([summed == size * crc]))[0])
    if show:
        print(f"test accuracy {test_acc:.4f} ({int(hits[0])}/{int(hits[1])}), "
              f"{steps * args.batch_size * args.epochs / elapsed:.0f} samples/s overall, "
              f"{elapsed:.1f} s", flush=True)
        verdict = "identical" if identical else "DIFFERENT"
        print(f"weights {verdict} on {size} rank{'s' if size > 1 else ''}: "
              f"checksum {crc:#010x}, all_sum {summed}", flush=True)
    result = {"rank": rank, "size": size, "final_loss": final_loss, "test_acc": test_acc,
              "checksum": crc, "identical": identical}
    if args.json:
        print(json.dumps(result), flush=True)
    if not identical:
        raise SystemExit(f"rank {rank}: weights differ across ranks (checksum {crc:#010x})")
    return result


if __name__ == "__main__":
    train(parse_args())
