"""`ProcessGroupRingcomm`: torch.distributed's process group over one ringcomm Group.

torch keeps a Python subclass of `dist.ProcessGroup` as the group itself: its methods are
what `dist.all_reduce` & co. and DDP's reducer (through torch's C++ trampoline) call. Each
method checks its tensors, maps the call onto ringcomm and returns a torch `Work`:

- in place where torch's call is in place: all_reduce, broadcast, all_gather_into_tensor,
  reduce_scatter_tensor and all_to_all_single with equal splits run ringcomm's backend on
  NumPy views of the caller's tensors (no copy for contiguous tensors; a staged copy for
  others, written back when the call is done);
- unequal sizes go through ringcomm.all_gather_v, reduce_scatter_v and all_to_all_v, whose
  results are copied into the caller's tensors when the call completes;
- calls run in the group's call order (ringcomm's `Calls`): a small collective (up to
  INLINE_BYTES) with nothing in flight runs at once in the caller's thread and returns a
  finished Work (the latency path: one NumPy view, ringcomm's fast path, no thread hand-off);
  every other call is queued and runs on the group's worker thread, so DDP's buckets overlap
  the backward pass.

send/recv and tags, the store-based monitored barrier and the group's creation are in
`p2p.py` and `__init__.py`.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from .. import uneven
from ..errors import RingcommError
from ..group import Group
from . import p2p
from .reductions import SUM, Reduction, back_into, reduction
from .tensors import Staged, check, flat, plain, readable, view
from .work import Done, Pending, backend_error, last

__all__ = ["INLINE_BYTES", "ProcessGroupRingcomm"]

# Collectives up to this many bytes with nothing in flight run in the caller's thread: a
# thread hand-off costs more than such a call (a 4-byte all_reduce takes ~2 us on one host).
INLINE_BYTES = 64 << 10



def _one(op: str, tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    if len(tensors) != 1:
        raise ValueError(f"ringcomm {op}: expected one tensor per call (one CPU device), got "
                         f"{len(tensors)}")
    return check(op, tensors[0])


def _rows(t: torch.Tensor) -> int:
    return t.shape[0] if t.dim() else 1


# torch's stubs type ProcessGroup's methods with overloads a Python subclass cannot match
# one by one; the methods below follow what torch's C++ trampoline and distributed_c10d call.
_ProcessGroup: Any = dist.ProcessGroup


class ProcessGroupRingcomm(_ProcessGroup):
    """A torch process group whose messages ringcomm carries (one ringcomm Group)."""

    def __init__(self, group: Group, rank: int, size: int, store: Any = None,
                 timeout: float | None = None) -> None:
        super().__init__(rank, size)
        self.ringcomm_group = group
        self._calls = group._calls
        self._b = group._backend
        self._size = size
        self._store = store
        self._timeout = timeout
        self._barriers = 0
        self._name = ""
        self._desc = ""

    def getBackendName(self) -> str:
        return "ringcomm"

    # torch keeps a group's name and description in its C++ backends, which a Python group
    # has none of: they live here (DeviceMesh, FSDP2 and functional collectives look them up).
    def setGroupName(self, name: str) -> None:
        self._name = name

    def getGroupName(self) -> str:
        return self._name

    def setGroupDesc(self, desc: str) -> None:
        self._desc = desc

    def getGroupDesc(self) -> str:
        return self._desc

    def __repr__(self) -> str:
        return f"ProcessGroupRingcomm(rank={self.rank()}, size={self.size()})"

    # -- running a call ------------------------------------------------------------------

    def _run(self, op: str, fn: Callable[[], None], outputs: list[torch.Tensor],
             nbytes: int, opts: Any = None) -> dist.Work:
        """Run `fn` (backend calls that write `outputs`) in the group's call order: at once
        when nothing is in flight and the call is small or blocking (async_op=False)."""
        calls = self._calls
        if calls.pending == 0 and (nbytes <= INLINE_BYTES or _blocking(opts)):
            try:
                fn()
            except RingcommError as e:
                raise backend_error(op, e) from e
            return Done(outputs)
        return Pending(calls.run(fn, async_op=True), outputs, op)

    def _then(self, op: str, start: Callable[[bool], Any], finish: Callable[[Any], None],
              outputs: list[torch.Tensor], nbytes: int, opts: Any = None) -> dist.Work:
        """Run a ringcomm API call `start(async_op)`; `finish(result)` copies its result out."""
        if self._calls.pending == 0 and (nbytes <= INLINE_BYTES or _blocking(opts)):
            try:
                finish(start(False))
            except RingcommError as e:
                raise backend_error(op, e) from e
            return Done(outputs)
        done: concurrent.futures.Future = concurrent.futures.Future()

        def copy_out(w: concurrent.futures.Future) -> None:
            try:
                finish(w.result())
            except BaseException as e:  # handed to whoever waits on the Work
                done.set_exception(e)
            else:
                done.set_result(None)
        start(True).add_done_callback(copy_out)
        return Pending(done, outputs, op)

    # -- reductions ------------------------------------------------------------------------

    def allreduce(self, tensors: list[torch.Tensor], opts: Any = None) -> dist.Work:
        t = _one("all_reduce", tensors)
        red = reduction(opts) if opts is not None else SUM
        nbytes = t.numel() * t.element_size()
        red.check("all_reduce", t)
        if red.factor is None and not red.average and nbytes <= INLINE_BYTES \
                and self._calls.pending == 0 and plain(t):
            # The latency path: ringcomm's fast path on the tensor's own NumPy view.
            a = view(t)
            try:
                y = self._b.reduce_small(a, red.op)
                if y is None:
                    self._b.all_reduce_into(a, a, red.op)
                else:
                    np.copyto(a, y)
            except RingcommError as e:
                raise backend_error("all_reduce", e) from e
            return Done(tensors)
        return self._run("all_reduce", self._reducer(t, red), tensors, nbytes, opts=opts)

    def _reducer(self, t: torch.Tensor, red: Reduction) -> Callable[[], None]:
        src = red.prepare(t)
        s = Staged(t, copy_in=src is t)
        inp = s.array if src is t else readable(src)
        b, size = self._b, self._size

        def run() -> None:
            b.all_reduce_into(inp, s.array, red.op)
            red.finish(s.work, size)
            s.finish()
        return run

    def allreduce_coalesced(self, tensors: list[torch.Tensor], opts: Any = None) -> dist.Work:
        red = reduction(opts) if opts is not None else SUM
        for t in tensors:
            check("all_reduce_coalesced", t)
            red.check("all_reduce_coalesced", t)
        steps: list[Callable[[], None]] = []
        by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
        for t in tensors:
            by_dtype.setdefault(t.dtype, []).append(t)
        b, size = self._b, self._size
        for same in by_dtype.values():
            contrib = [red.prepare(t) for t in same]
            buf, back = flat(contrib, copy_in=True)

            def run(buf: np.ndarray = buf, back: Callable[[], None] = back,
                    same: list[torch.Tensor] = same) -> None:
                b.all_reduce_into(buf, buf, red.op)
                back_into(same, buf, back, red, size)
            steps.append(run)
        nbytes = sum(t.numel() * t.element_size() for t in tensors)

        def run_all() -> None:
            for step in steps:
                step()
        return self._run("all_reduce_coalesced", run_all, tensors, nbytes, opts=opts)

    def reduce(self, tensors: list[torch.Tensor], opts: Any = None) -> dist.Work:
        t = _one("reduce", tensors)
        red = reduction(opts)
        red.check("reduce", t)
        root = int(opts.rootRank)
        if root == self.rank():
            return self._run("reduce", self._reducer(t, red), tensors,
                             t.numel() * t.element_size(), opts=opts)
        # Every rank reduces (ringcomm has no reduce to one rank); this one keeps its tensor.
        inp = readable(red.prepare(t))
        scratch = np.empty_like(inp)
        b = self._b
        return self._run("reduce", lambda: b.all_reduce_into(inp, scratch, red.op), tensors,
                         t.numel() * t.element_size(), opts=opts)

    def reduce_scatter(self, outputs: list[torch.Tensor], inputs: list[list[torch.Tensor]],
                       opts: Any = None) -> dist.Work:
        out = _one("reduce_scatter", outputs)
        if len(inputs) != 1 or len(inputs[0]) != self._size:
            raise ValueError(f"ringcomm reduce_scatter: expected a list of {self._size} input "
                             "tensors")
        ins = [check("reduce_scatter", t) for t in inputs[0]]
        red = reduction(opts)
        red.check("reduce_scatter", out)
        if any(t.dtype != out.dtype for t in ins):
            raise TypeError("ringcomm reduce_scatter: every input must have the output's dtype")
        if ins[self.rank()].numel() != out.numel():
            raise ValueError(f"ringcomm reduce_scatter: input {self.rank()} has "
                             f"{ins[self.rank()].numel()} elements, the output {out.numel()}")
        buf, _ = flat([red.prepare(t) for t in ins], copy_in=True)
        counts = [t.numel() for t in ins]
        s = Staged(out, copy_in=False)
        g, size, b = self.ringcomm_group, self._size, self._b
        nbytes = buf.nbytes
        if len(set(counts)) == 1:
            def run() -> None:
                b.reduce_scatter(buf, s.array.reshape(-1), red.op)
                red.finish(s.work, size)
                s.finish()
            return self._run("reduce_scatter", run, outputs, nbytes, opts=opts)

        def finish(r: np.ndarray) -> None:
            np.copyto(s.array.reshape(-1), r)
            red.finish(s.work, size)
            s.finish()
        return self._then("reduce_scatter", lambda a: uneven.reduce_scatter_v(
            buf, counts, red.op, group=g, async_op=a), finish, outputs, nbytes, opts=opts)

    def reduce_scatter_single(self, output: torch.Tensor, input: torch.Tensor,
                              opts: Any = None) -> dist.Work:
        check("reduce_scatter_tensor", output)
        check("reduce_scatter_tensor", input)
        red = reduction(opts)
        red.check("reduce_scatter_tensor", output)
        if input.numel() != output.numel() * self._size or input.dtype != output.dtype:
            raise ValueError(
                f"ringcomm reduce_scatter_tensor: the input must hold group size ({self._size}) "
                f"x the output's elements in its dtype; got {input.numel()} {input.dtype} "
                f"elements for an output of {output.numel()} {output.dtype}")
        src = red.prepare(input)
        inp = readable(src)
        s = Staged(output, copy_in=False)
        b, size = self._b, self._size

        def run() -> None:
            b.reduce_scatter(inp, s.array.reshape(-1), red.op)
            red.finish(s.work, size)
            s.finish()
        return self._run("reduce_scatter_tensor", run, [output], inp.nbytes, opts=opts)

    _reduce_scatter_base = reduce_scatter_single

    def reduce_scatter_single_coalesced(self, outputs: list[torch.Tensor],
                                        inputs: list[torch.Tensor],
                                        opts: Any = None) -> dist.Work:
        works = [self.reduce_scatter_single(o, i, opts) for o, i in zip(outputs, inputs)]
        return last(works, outputs)

    reduce_scatter_tensor_coalesced = reduce_scatter_single_coalesced

    # -- gathers and scatters ---------------------------------------------------------------

    def allgather(self, outputs: list[list[torch.Tensor]], inputs: list[torch.Tensor],
                  opts: Any = None) -> dist.Work:
        t = _one("all_gather", inputs)
        if len(outputs) != 1 or len(outputs[0]) != self._size:
            raise ValueError(f"ringcomm all_gather: expected a list of {self._size} output "
                             "tensors")
        outs = [check("all_gather", o) for o in outputs[0]]
        if any(o.dtype != t.dtype for o in outs):
            raise TypeError("ringcomm all_gather: every output must have the input's dtype")
        counts = [o.numel() for o in outs]
        if counts[self.rank()] != t.numel():
            raise ValueError(f"ringcomm all_gather: output {self.rank()} has {counts[self.rank()]}"
                             f" elements, this rank's input {t.numel()}")
        inp = readable(t)
        buf, back = flat(outs, copy_in=False)
        b, g = self._b, self.ringcomm_group
        nbytes = buf.nbytes
        if len(set(counts)) == 1:
            def run() -> None:
                b.all_gather(inp, buf)
                back()
            return self._run("all_gather", run, outs, nbytes, opts=opts)

        def finish(r: np.ndarray) -> None:
            np.copyto(buf, r)
            back()
        return self._then("all_gather", lambda a: uneven.all_gather_v(
            inp, counts, group=g, async_op=a), finish, outs, nbytes, opts=opts)

    def all_gather_single(self, output: torch.Tensor, input: torch.Tensor,
                          opts: Any = None) -> dist.Work:
        check("all_gather_into_tensor", output)
        check("all_gather_into_tensor", input)
        if output.numel() != input.numel() * self._size or input.dtype != output.dtype:
            raise ValueError(
                f"ringcomm all_gather_into_tensor: the output must hold group size "
                f"({self._size}) x the input's elements in its dtype; got {output.numel()} "
                f"{output.dtype} elements for an input of {input.numel()} {input.dtype}")
        inp = readable(input)
        s = Staged(output, copy_in=False)
        b = self._b

        def run() -> None:
            b.all_gather(inp, s.array.reshape(-1))
            s.finish()
        return self._run("all_gather_into_tensor", run, [output], s.array.nbytes, opts=opts)

    _allgather_base = all_gather_single

    def allgather_coalesced(self, outputs: list[list[torch.Tensor]], inputs: list[torch.Tensor],
                            opts: Any = None) -> dist.Work:
        works = [self.allgather([o], [i], opts) for o, i in zip(outputs, inputs)]
        return last(works, [t for o in outputs for t in o])

    def all_gather_single_coalesced(self, outputs: list[torch.Tensor],
                                    inputs: list[torch.Tensor], opts: Any = None) -> dist.Work:
        works = [self.all_gather_single(o, i, opts) for o, i in zip(outputs, inputs)]
        return last(works, outputs)

    allgather_into_tensor_coalesced = all_gather_single_coalesced

    def broadcast(self, tensors: list[torch.Tensor], opts: Any = None) -> dist.Work:
        t = _one("broadcast", tensors)
        root = int(opts.rootRank) if opts is not None else 0
        s = Staged(t)
        b = self._b

        def run() -> None:
            b.broadcast(s.array, root)
            s.finish()
        return self._run("broadcast", run, tensors, s.array.nbytes, opts=opts)

    def gather(self, outputs: list[list[torch.Tensor]], inputs: list[torch.Tensor],
               opts: Any = None) -> dist.Work:
        t = _one("gather", inputs)
        root = int(opts.rootRank)
        inp = readable(t)
        b = self._b
        if self.rank() != root:
            return self._run("gather", lambda: b.gather(inp, None, root), [],
                             inp.nbytes, opts=opts)
        if len(outputs) != 1 or len(outputs[0]) != self._size:
            raise ValueError(f"ringcomm gather: the root needs a list of {self._size} output "
                             "tensors")
        outs = [check("gather", o) for o in outputs[0]]
        if any(o.numel() != t.numel() or o.dtype != t.dtype for o in outs):
            raise ValueError("ringcomm gather: every output must have the input's size and "
                             "dtype")
        buf, back = flat(outs, copy_in=False)

        def run() -> None:
            b.gather(inp, buf, root)
            back()
        return self._run("gather", run, outs, buf.nbytes, opts=opts)

    def scatter(self, outputs: list[torch.Tensor], inputs: list[list[torch.Tensor]],
                opts: Any = None) -> dist.Work:
        out = _one("scatter", outputs)
        root = int(opts.rootRank)
        s = Staged(out, copy_in=False)
        if self.rank() == root:
            if len(inputs) != 1 or len(inputs[0]) != self._size:
                raise ValueError(f"ringcomm scatter: the root needs a list of {self._size} "
                                 "input tensors")
            ins = [check("scatter", i) for i in inputs[0]]
            if any(i.numel() != out.numel() or i.dtype != out.dtype for i in ins):
                raise ValueError("ringcomm scatter: every input must have the output's size "
                                 "and dtype")
            buf, _ = flat(ins, copy_in=True)
        else:  # the others pass root's shape (checked like any call), its values unused
            buf = np.empty(out.numel() * self._size, dtype=s.array.dtype)
        b = self._b

        def run() -> None:
            b.scatter(buf, s.array.reshape(-1), root)
            s.finish()
        return self._run("scatter", run, outputs, buf.nbytes, opts=opts)

    def alltoall(self, outputs: list[torch.Tensor], inputs: list[torch.Tensor],
                 opts: Any = None) -> dist.Work:
        if len(outputs) != self._size or len(inputs) != self._size:
            raise ValueError(f"ringcomm all_to_all: expected {self._size} input and output "
                             "tensors")
        ins = [check("all_to_all", t) for t in inputs]
        outs = [check("all_to_all", t) for t in outputs]
        if len({t.dtype for t in ins + outs}) != 1:
            raise TypeError("ringcomm all_to_all: every input and output must have one dtype")
        send, _ = flat(ins, copy_in=True)
        recv, back = flat(outs, copy_in=False)
        return self._exchange("all_to_all", send, recv, back, [t.numel() for t in ins],
                              [t.numel() for t in outs], outs, opts=opts)

    def all_to_all_single(self, output: torch.Tensor, input: torch.Tensor,
                          output_split_sizes: list[int], input_split_sizes: list[int],
                          opts: Any = None) -> dist.Work:
        check("all_to_all_single", output)
        check("all_to_all_single", input)
        if input.dtype != output.dtype:
            raise TypeError("ringcomm all_to_all_single: the input and output dtypes differ")
        p = self._size
        row_in = input.numel() // max(1, _rows(input))
        row_out = output.numel() // max(1, _rows(output))
        ins = list(input_split_sizes) or _even("input", _rows(input), p)
        outs = list(output_split_sizes) or _even("output", _rows(output), p)
        if len(ins) != p or len(outs) != p:
            raise ValueError(f"ringcomm all_to_all_single: split sizes need {p} entries, got "
                             f"{len(ins)} (input) and {len(outs)} (output)")
        if sum(ins) != _rows(input) or sum(outs) != _rows(output):
            raise ValueError("ringcomm all_to_all_single: split sizes must add up to the "
                             f"tensors' first dimension ({_rows(input)} input, {_rows(output)} "
                             f"output rows), got {ins} and {outs}")
        send = readable(input)
        s = Staged(output, copy_in=False)
        recv = s.array.reshape(-1)
        return self._exchange("all_to_all_single", send, recv, s.finish,
                              [n * row_in for n in ins], [n * row_out for n in outs], [output],
                              opts=opts)

    alltoall_base = all_to_all_single

    def _exchange(self, op: str, send: np.ndarray, recv: np.ndarray, back: Callable[[], None],
                  counts_in: list[int], counts_out: list[int],
                  outputs: list[torch.Tensor], opts: Any = None) -> dist.Work:
        b, g = self._b, self.ringcomm_group
        nbytes = send.nbytes + recv.nbytes
        if len(set(counts_in)) == 1 and counts_in == counts_out:
            def run() -> None:
                b.all_to_all(send, recv)
                back()
            return self._run(op, run, outputs, nbytes, opts=opts)

        def finish(r: np.ndarray) -> None:
            np.copyto(recv, r)
            back()
        return self._then(op, lambda a: uneven.all_to_all_v(
            send, counts_in, counts_out, group=g, async_op=a), finish, outputs, nbytes,
            opts=opts)

    # -- barriers, send/recv ----------------------------------------------------------------

    def barrier(self, opts: Any = None) -> dist.Work:
        return self._run("barrier", self._b.barrier, [], 0, opts=opts)

    def monitored_barrier(self, timeout: Any = None, wait_all_ranks: bool = False) -> None:
        """Return once every rank arrived, else raise naming the ranks that did not, within
        `timeout` (default: the group's). torch's dist.monitored_barrier accepts gloo only;
        call this (or ringcomm.torch.monitored_barrier) instead."""
        self._barriers += 1
        p2p.monitored_barrier(self, self._store, self._barriers, timeout, wait_all_ranks)

    def send(self, tensors: list[torch.Tensor], dst: int, tag: int = 0) -> dist.Work:
        return p2p.send(self, _one("send", tensors), int(dst), int(tag))

    def recv(self, tensors: list[torch.Tensor], src: int, tag: int = 0) -> dist.Work:
        return p2p.recv(self, _one("recv", tensors), int(src), int(tag))

    def recv_anysource(self, tensors: list[torch.Tensor], tag: int = 0) -> dist.Work:
        raise dist.DistBackendError(
            "ringcomm recv: a receive from any source is not supported (ringcomm matches every "
            "message to the rank it comes from); pass src= (or use all_gather/gather when the "
            "sender is not known in advance)")


def _blocking(opts: Any) -> bool:
    """Return whether torch's caller waits for the call at once (async_op=False)."""
    return opts is not None and not getattr(opts, "asyncOp", True)


def _even(what: str, rows: int, p: int) -> list[int]:
    if rows % p:
        raise ValueError(f"ringcomm all_to_all_single: the {what}'s first dimension ({rows}) "
                         f"does not divide among {p} ranks; pass split sizes")
    return [rows // p] * p
