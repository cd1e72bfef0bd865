"""The pool of large result buffers: reuse after release, never while any view lives."""

import gc

import numpy as np

from ringcomm import _pool


def test_small_arrays_are_not_pooled() -> None:
    a = _pool.empty((10,), np.float32)
    assert a.flags.owndata and a.flags.writeable


def test_block_comes_back_after_the_result_is_gone() -> None:
    n = _pool.MIN_BYTES // 4
    a = _pool.empty((n,), np.float32)
    assert a.flags.writeable and a.flags.c_contiguous
    addr = a.__array_interface__["data"][0]
    del a
    gc.collect()
    b = _pool.empty((n // 2, 2), np.float32)  # same bytes, another shape
    assert b.__array_interface__["data"][0] == addr


def test_views_keep_the_block_out_of_the_pool() -> None:
    n = _pool.MIN_BYTES // 8
    a = _pool.empty((n,), np.float64)
    a[:] = 7.0
    view = a[::3].reshape(-1)[1:]
    del a
    gc.collect()
    b = _pool.empty((n,), np.float64)  # must be another block
    b[:] = -1.0
    assert (view == 7.0).all()


def test_the_pool_keeps_a_bounded_amount(monkeypatch) -> None:
    assert _pool.MAX_KEPT_BYTES == 1 << 30  # the bound itself: 1 GiB kept at most
    # An empty pool bounded at four blocks of MIN_BYTES. Given back in turn: three blocks
    # (kept), one of twice the size (it would pass the bound: freed), a fourth block (it
    # fills the bound exactly: kept), a fifth (freed). Exactly the bound stays.
    block = _pool.MIN_BYTES
    monkeypatch.setattr(_pool, "MAX_KEPT_BYTES", 4 * block)
    monkeypatch.setattr(_pool, "_free", {})
    monkeypatch.setattr(_pool, "_kept", 0)
    arrays = [_pool.empty((block,), np.uint8) for _ in range(5)]
    big = _pool.empty((2 * block,), np.uint8)
    addrs = [a.__array_interface__["data"][0] for a in arrays]
    for i in range(3):
        arrays[i] = None
    assert _pool._kept == 3 * block
    del big
    assert _pool._kept == 3 * block
    arrays[3] = None
    assert _pool._kept == 4 * block
    del arrays
    gc.collect()
    assert _pool._kept == 4 * block
    assert {n: len(blocks) for n, blocks in _pool._free.items()} == {block: 4}
    # The kept blocks are the first four given back, and are lent out again.
    again = [_pool.empty((block,), np.uint8) for _ in range(4)]
    assert sorted(a.__array_interface__["data"][0] for a in again) == sorted(addrs[:4])
    assert _pool._kept == 0
