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


def test_the_pool_keeps_a_bounded_amount() -> None:
    arrays = [_pool.empty((_pool.MIN_BYTES,), np.uint8) for _ in range(4)]
    del arrays
    gc.collect()
    assert _pool._kept <= _pool.MAX_KEPT_BYTES
