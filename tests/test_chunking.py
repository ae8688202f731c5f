"""Chunking: streams and buffers cut alike, and cut points survive insertions."""

from __future__ import annotations

import io
import os

from hypothesis import given, settings
from hypothesis import strategies as st

from cas.chunking import ChunkParams, FastCdcChunker

SMALL = ChunkParams(min_size=256, avg_size=1024, max_size=4096)


def cuts_stream(data: bytes, params: ChunkParams) -> list[tuple[int, int]]:
    chunker = FastCdcChunker(params)
    return [(c.offset, c.length) for c in chunker.chunks(io.BytesIO(data))]


def cuts_buffer(data: bytes, params: ChunkParams) -> list[tuple[int, int]]:
    chunker = FastCdcChunker(params)
    return [(c.offset, c.length) for c in chunker.chunks_of_buffer(data)]


@settings(max_examples=200)
@given(data=st.one_of(st.binary(max_size=20_000), st.integers(0, 50_000).map(os.urandom)))
def test_stream_and_buffer_give_the_same_cut_points(data):
    assert cuts_stream(data, SMALL) == cuts_buffer(data, SMALL)
    assert sum(length for _, length in cuts_buffer(data, SMALL)) == len(data)


def test_default_params_stream_and_buffer_agree_on_large_data():
    data = os.urandom(9 << 20)
    assert cuts_stream(data, ChunkParams()) == cuts_buffer(data, ChunkParams())


def test_insertion_moves_only_nearby_boundaries():
    data = os.urandom(200_000)
    shifted = data[:5000] + b"inserted!" + data[5000:]
    before = {data[o : o + n] for o, n in cuts_buffer(data, SMALL)}
    after = {shifted[o : o + n] for o, n in cuts_buffer(shifted, SMALL)}
    # All but the chunks around the insertion point are shared.
    assert len(before - after) <= 3
    assert len(before & after) >= len(before) - 3
