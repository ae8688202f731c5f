from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from cas.batching import batch_by_size


@given(sizes=st.lists(st.integers(0, 100), max_size=200))
def test_batches_keep_order_and_limits(sizes):
    items = list(enumerate(sizes))
    batches = batch_by_size(items, lambda i: i[1], max_bytes=150, max_items=7, alone_from=80)
    assert [i for b in batches for i in b] == items
    for batch in batches:
        assert batch
        if any(size >= 80 for _, size in batch):
            assert len(batch) == 1
        else:
            assert len(batch) <= 7 and sum(s for _, s in batch) <= 150
