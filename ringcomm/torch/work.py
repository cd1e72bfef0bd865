"""torch's Work for ringcomm's calls, and ringcomm's errors as torch's DistBackendError.

A call that ran at once in the caller's thread (small collectives with nothing in flight)
returns a `Done`; any other returns a `Pending` over ringcomm's own `Work` (a
`concurrent.futures.Future` completed by the group's call worker), so DDP's buckets and comm
hooks overlap the backward pass. `get_future()` is a `torch.futures.Future` whose value is the
list of output tensors, as gloo's is; it fails with `DistBackendError` when the call fails.
"""

from __future__ import annotations

import concurrent.futures
import datetime
from typing import Any

import torch
import torch.distributed as dist

from ..errors import RingcommError

__all__ = ["Done", "Pending", "backend_error", "last"]


def backend_error(op: str, e: BaseException) -> BaseException:
    """Return what torch's user sees for ringcomm's error `e` in `op`: a DistBackendError
    carrying ringcomm's message (ringcomm's exception is its __cause__); other errors as they are.
    """
    if isinstance(e, RingcommError):
        error = dist.DistBackendError(f"ringcomm {op}: {type(e).__name__}: {e}")
        error.__cause__ = e
        return error
    return e


def _seconds(timeout: Any) -> float | None:
    """Return `Work.wait`'s timeout in seconds; None for none (torch's default is 0: none)."""
    if timeout is None:
        return None
    s = timeout.total_seconds() if isinstance(timeout, datetime.timedelta) else float(timeout)
    return s if s > 0 else None


# torch's stubs do not let a subclass's methods differ from Work's typed ones.
_Work: Any = dist.Work


class Done(_Work):
    """A call that finished before it returned (its outputs are written)."""

    def __init__(self, outputs: list[torch.Tensor], source: int = -1) -> None:
        super().__init__()
        self._outputs = outputs
        self._source = source

    def wait(self, timeout: Any = None) -> bool:
        return True

    def is_completed(self) -> bool:
        return True

    def is_success(self) -> bool:
        return True

    def exception(self) -> None:
        return None

    def result(self) -> list[torch.Tensor]:
        return self._outputs

    def get_future(self) -> torch.futures.Future:
        fut: torch.futures.Future = torch.futures.Future()
        fut.set_result(self._outputs)
        return fut

    def source_rank(self) -> int:
        return self._source

    _source_rank = source_rank


class Pending(_Work):
    """A call queued in the group's call order: ringcomm's Work, seen as torch's."""

    def __init__(self, work: concurrent.futures.Future, outputs: list[torch.Tensor], op: str,
                 source: int = -1) -> None:
        super().__init__()
        self._work = work
        self._outputs = outputs
        self._op = op
        self._source = source
        self._future: torch.futures.Future | None = None

    def wait(self, timeout: Any = None) -> bool:
        seconds = _seconds(timeout)
        try:
            self._work.result(seconds)
        except concurrent.futures.TimeoutError:
            if self._work.done():
                raise
            raise dist.DistBackendError(
                f"ringcomm {self._op}: not done within the wait's timeout of {seconds:g} s; the "
                "call is still in flight (ringcomm's calls cannot be cancelled) and ends at the "
                "group's deadline (init_process_group(timeout=) / RINGCOMM_TIMEOUT) at the "
                "latest") from None
        except RingcommError as e:
            raise backend_error(self._op, e) from e
        return True

    def is_completed(self) -> bool:
        return self._work.done()

    def is_success(self) -> bool:
        return self._work.done() and self._work.exception() is None

    def exception(self) -> BaseException | None:
        if not self._work.done():
            return None
        e = self._work.exception()
        return None if e is None else backend_error(self._op, e)

    def result(self) -> list[torch.Tensor]:
        self.wait()
        return self._outputs

    def get_future(self) -> torch.futures.Future:
        if self._future is None:
            fut: torch.futures.Future = torch.futures.Future()
            self._future = fut
            outputs, op = self._outputs, self._op

            def complete(w: concurrent.futures.Future) -> None:
                e = w.exception()
                if e is None:
                    fut.set_result(outputs)
                else:
                    fut.set_exception(backend_error(op, e))
            self._work.add_done_callback(complete)
        return self._future

    def source_rank(self) -> int:
        return self._source

    _source_rank = source_rank


def last(works: list[dist.Work], outputs: list[torch.Tensor]) -> dist.Work:
    """One Work for calls made in order: done when the last is (calls complete in order),
    failed with the first failure."""
    pending = [w for w in works if isinstance(w, Pending)]
    if not pending:
        return Done(outputs)
    done: concurrent.futures.Future = concurrent.futures.Future()

    def settle(_: concurrent.futures.Future) -> None:
        for w in pending:
            e = w._work.exception()
            if e is not None:
                done.set_exception(e)
                return
        done.set_result(None)
    pending[-1]._work.add_done_callback(settle)
    return Pending(done, outputs, pending[-1]._op)
