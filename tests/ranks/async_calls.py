"""The asynchronous variant of every op with several calls in flight, on any backend.

argv[1] is the backend the test expects (reported back). Every rank queues calls with
async_op=True, up to IN_FLIGHT at a time, then waits on them newest first (a Work's result
does not depend on the order it is waited on), with blocking calls between them (they run
after the calls in flight). Every result is compared exactly with what the rank computes for
itself. Prints `rank R/P: N async cases passed (backend B)`; N must equal `expected(P)`.
"""

import sys

import numpy as np

import ringcomm

DTYPES = [np.float32, np.int64, np.float64]
SIZES = [1, 100, 70000, 400_000]
P2P_SIZES = [1, 3000]
IN_FLIGHT = 8
LARGE = 1 << 20  # beyond every buffer on the way: a send that waits for its recv


def expected(p: int, backend: str = "ring") -> int:
    """Return the cases a rank checks at `p` ranks."""
    per = 6 if p > 1 else 5  # all_sum, all_max, all_min, all_gather, broadcast, sum_scatter
    collectives = len(DTYPES) * len(SIZES) * per
    p2p = 2 * len(P2P_SIZES) if p > 1 else 0  # recv and recv_like (sends return their input)
    more = len(DTYPES) * 3 + 2 + (1 if p > 1 else 0)  # all_to_all, gather, scatter; objects
    # Every rank's recvs posted before its sends, a collective between (the ring's lanes).
    lanes = len(P2P_SIZES + [LARGE]) if p > 1 and backend == "ring" else 0
    return collectives + p2p + more + lanes + 3  # blocking between, barrier, average_gradients


def data(k: int, r: int, n: int, dt: type) -> np.ndarray:
    return ((np.arange(n) * (r + 1) + 7 * k + r) % 251).astype(dt)


def main() -> None:
    world = ringcomm.init()
    R, P = world.rank(), world.size()
    cases = 0
    pending: list[tuple[ringcomm.Work, np.ndarray, str]] = []

    def drain() -> None:
        nonlocal cases
        for work, want, what in reversed(pending):
            got = np.asarray(work.wait(timeout=120))
            assert work.done()
            assert got.shape == want.shape and np.array_equal(got, want), (what, got, want)
            cases += 1
        pending.clear()

    def queue(work: ringcomm.Work, want: np.ndarray, what: str) -> None:
        assert isinstance(work, ringcomm.Work), type(work)
        pending.append((work, want, what))
        if len(pending) >= IN_FLIGHT:
            drain()

    k = 0
    for dt in DTYPES:
        for n in SIZES:
            k += 1
            x = data(k, R, n, dt)
            every = [data(k, r, n, dt) for r in range(P)]
            queue(ringcomm.all_sum(x, async_op=True), sum(every).astype(dt), f"all_sum {dt} {n}")
            queue(ringcomm.all_max(x, async_op=True), np.maximum.reduce(every), "all_max")
            queue(ringcomm.all_min(x, async_op=True), np.minimum.reduce(every), "all_min")
            queue(ringcomm.all_gather(x, async_op=True), np.concatenate(every), "all_gather")
            root = k % P
            queue(ringcomm.broadcast(x, root=root, async_op=True), every[root], "broadcast")
            if P > 1:
                m = n - n % P
                whole = sum(e[:m] for e in every).astype(dt)
                queue(ringcomm.sum_scatter(x[:m], async_op=True),
                      whole[R * (m // P):(R + 1) * (m // P)], "sum_scatter")
    for dt in DTYPES:  # all_to_all, gather and scatter
        k += 1
        n = 3000 * P
        x = data(k, R, n, dt)
        every = [data(k, r, n, dt) for r in range(P)]
        m, root = n // P, k % P
        queue(ringcomm.all_to_all(x, async_op=True),
              np.concatenate([e[R * m:(R + 1) * m] for e in every]), "all_to_all")
        want = np.concatenate(every) if R == root else np.empty(0, dt)
        queue(ringcomm.gather(x, root, async_op=True), want, "gather")
        queue(ringcomm.scatter(x, root, async_op=True), every[root][R * m:(R + 1) * m], "scatter")
    drain()
    objs = ringcomm.all_gather_object(("rank", R, "x" * R), async_op=True)
    got_b = ringcomm.broadcast_object({"from": 0} if R == 0 else None, 0, async_op=True)
    if P > 1:
        if R % 2 == 0:
            ringcomm.send_object(["to", (R + 1) % P], (R + 1) % P, async_op=True)
            got_o = ringcomm.recv_object((R - 1) % P, async_op=True)
        else:
            got_o = ringcomm.recv_object((R - 1) % P, async_op=True)
            ringcomm.send_object(["to", (R + 1) % P], (R + 1) % P, async_op=True)
    # The object calls' results are not arrays: checked here, all of them in flight until now.
    assert objs.result() == [("rank", r, "x" * r) for r in range(P)], objs.result()
    assert got_b.result() == {"from": 0}
    cases += 2
    if P > 1:
        assert got_o.result() == ["to", R], got_o.result()
        cases += 1
    # A blocking call behind calls in flight runs after them, in call order.
    first = ringcomm.all_sum(np.full(5, R, np.int64), async_op=True)
    now = ringcomm.all_sum(np.full(5, R + 1, np.int64))
    assert first.done() and (now == P * (P + 1) // 2).all(), now
    pending.append((first, np.full(5, P * (P - 1) // 2), "before a blocking call"))
    drain()
    if P > 1:  # each rank sends to the next; even ranks send first, odd ranks receive first
        to, frm = (R + 1) % P, (R - 1) % P
        for n in P2P_SIZES:
            mine, theirs = data(n, R, n, np.float32), data(n, frm, n, np.float32)
            order = ["send", "recv", "recv_like"] if R % 2 == 0 else ["recv", "recv_like", "send"]
            for what in order:
                if what == "send":
                    sent = ringcomm.send(mine, to, async_op=True)
                    ringcomm.send(mine, to, async_op=True)  # the second message, for recv_like
                elif what == "recv":
                    queue(ringcomm.recv((n,), np.float32, frm, async_op=True), theirs, "recv")
                else:
                    queue(ringcomm.recv_like(mine, frm, async_op=True), theirs, "recv_like")
            drain()
            assert sent.result() is mine
    if P > 1 and world.backend == "ring":
        # Every rank posts its recv before its send, with a collective between: on the ring
        # each direction to each peer is a lane of its own, so none waits for the others.
        to, frm = (R + 1) % P, (R - 1) % P
        for n in P2P_SIZES + [LARGE]:
            got = ringcomm.recv((n,), np.float64, frm, async_op=True)
            total = ringcomm.all_sum(np.ones(3), async_op=True)
            ringcomm.send(data(n, R, n, np.float64), to, async_op=True)
            queue(got, data(n, frm, n, np.float64), "recv posted before the send")
            assert total.result(timeout=120)[0] == P
        drain()
    work = ringcomm.barrier(async_op=True)
    assert work.result() is None
    cases += 1
    avg = ringcomm.average_gradients({"w": np.full(9, float(R)), "b": [np.ones(2) * R]},
                                     async_op=True)
    out = avg.result()
    assert np.allclose(out["w"], (P - 1) / 2) and np.allclose(out["b"][0], (P - 1) / 2), out
    cases += 1
    assert cases == expected(P, world.backend), (cases, expected(P, world.backend))
    print(f"rank {R}/{P}: {cases} async cases passed (backend {world.backend})", flush=True)


if __name__ == "__main__":
    backend = sys.argv[1] if len(sys.argv) > 1 else "ring"
    main()
