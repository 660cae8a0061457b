"""What a caller may give as a command's stdin or a file's content, read in pieces."""

from __future__ import annotations

from typing import AsyncIterable, BinaryIO, Iterable, Iterator, Union

from ._core import stdin_chunks

CHUNK = 256 << 10

#: Bytes or text (sent whole), a binary file object (read in pieces), or any iterable of bytes
#: (a generator: sent as it yields).
Data = Union[bytes, bytearray, memoryview, str, BinaryIO, Iterable[bytes]]
AsyncData = Union[Data, AsyncIterable[bytes]]


def chunks(data: Data) -> Iterator[bytes]:
    """``data`` in pieces of at most 256 KiB (an iterable's own pieces as they come)."""
    if isinstance(data, str):
        yield from stdin_chunks(data, CHUNK)
    elif isinstance(data, (bytes, bytearray, memoryview)):
        yield from stdin_chunks(bytes(data), CHUNK)
    elif hasattr(data, "read"):
        f: BinaryIO = data  # type: ignore[assignment]
        while b := f.read(CHUNK):
            yield b
    else:
        for b in data:
            if b:
                yield bytes(b)
