"""PagedKVCache: forks share pages, shared pages are copied before a write, out of pages loses nothing."""

import pytest
import torch

from pyspec import OutOfPagesError, PagedKVCache, ops


def write(cache, seq, values):
    """Appends one token per value (K = V = value everywhere) to every layer and commits it."""
    n = len(values)
    cache.reserve(seq, n)
    table, lens = cache.tables([seq])
    x = torch.tensor(values, dtype=cache.k.dtype)[:, None, None].expand(n, *cache.k.shape[3:]).contiguous()
    indptr = torch.tensor([0, n], dtype=torch.int32)
    for layer in range(cache.k.shape[0]):
        ops.paged_kv_append(cache.k[layer], cache.v[layer], x, x, indptr, table, lens)
    cache.commit(seq, n)


def read(cache, seq, layer=0):
    table, lens = cache.tables([seq])
    slots = torch.arange(int(lens[0]))
    return cache.k[layer, table[0, slots // cache.page_size].long(), slots % cache.page_size, 0, 0].tolist()


def test_fork_shares_then_copies_on_write():
    cache = PagedKVCache(num_layers=2, num_pages=6, page_size=4, kv_heads=1, head_dim=3)
    a = cache.add_sequence()
    write(cache, a, [1, 2, 3, 4, 5, 6])  # pages: full + half-full
    b = cache.fork(a)
    assert cache.stats()["used_pages"] == 2 and cache.stats()["shared_pages"] == 2
    write(cache, b, [70])  # copies the shared partial page only
    assert cache.stats()["used_pages"] == 3 and cache.stats()["shared_pages"] == 1
    write(cache, a, [8])  # a's partial page is now private: written in place
    assert cache.stats()["used_pages"] == 3
    assert read(cache, a) == [1, 2, 3, 4, 5, 6, 8]
    assert read(cache, b) == [1, 2, 3, 4, 5, 6, 70]
    assert read(cache, b, layer=1) == [1, 2, 3, 4, 5, 6, 70]
    cache.release(a)
    assert read(cache, b) == [1, 2, 3, 4, 5, 6, 70]
    cache.release(b)
    assert cache.stats()["used_pages"] == 0 and cache.stats()["free_pages"] == 6


def test_out_of_pages_changes_nothing():
    cache = PagedKVCache(num_layers=1, num_pages=3, page_size=2, kv_heads=1, head_dim=2)
    a = cache.add_sequence()
    write(cache, a, [1, 2, 3])
    b = cache.add_sequence()
    before = (cache.stats(), cache.tables([a])[0].clone(), cache.k.clone())
    with pytest.raises(OutOfPagesError, match="free pages"):
        cache.reserve(b, 3)  # needs 2 pages, 1 free
    assert cache.stats() == before[0] and torch.equal(cache.tables([a])[0], before[1])
    assert torch.equal(cache.k, before[2])
    write(cache, b, [9, 9])  # one page still works
    assert read(cache, a) == [1, 2, 3]


def test_rollback_frees_pages_and_fork_of_rolled_back_prefix():
    cache = PagedKVCache(num_layers=1, num_pages=8, page_size=2, kv_heads=1, head_dim=2)
    a = cache.add_sequence()
    write(cache, a, [1, 2, 3, 4, 5])
    cache.rollback(a, 2)
    assert cache.length(a) == 2 and cache.stats()["used_pages"] == 1
    b = cache.fork(a)
    write(cache, b, [7])  # the shared page is full: b gets a fresh page, no copy
    assert cache.stats()["shared_pages"] == 1 and read(cache, b) == [1, 2, 7]
    cache.rollback(a, 1)
    write(cache, a, [6])  # writes into the shared page: copied first
    assert read(cache, a) == [1, 6] and read(cache, b) == [1, 2, 7]


def test_misuse_errors():
    cache = PagedKVCache(num_layers=1, num_pages=2, page_size=2, kv_heads=1, head_dim=2)
    with pytest.raises(KeyError):
        cache.fork(42)
    a = cache.add_sequence()
    with pytest.raises(ValueError, match="reserve"):
        cache.commit(a, 1)
    with pytest.raises(ValueError):
        cache.rollback(a, 3)
    with pytest.raises(ValueError):
        PagedKVCache(num_layers=0, num_pages=2, page_size=2, kv_heads=1, head_dim=2)
