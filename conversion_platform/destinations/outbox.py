"""The outbox: in dry-run mode, each request body a destination would POST, one per line."""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO


def outbox_path(outbox_dir: Path, destination: str, partition_key: str) -> Path:
    """`HOME/outbox/<destination>/<partition key>.jsonl`."""
    return outbox_dir / destination / f"{partition_key}.jsonl"


class OutboxWriter:
    """Writes an hour's bodies as they are built; the file replaces the old one on close.

    A re-run rewrites the hour's file, never appends, and a reader never sees half of it.
    """

    def __init__(self, outbox_dir: Path, destination: str, partition_key: str) -> None:
        self.path = outbox_path(outbox_dir, destination, partition_key)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._temporary = self.path.with_suffix(".jsonl.tmp")
        self._handle: BinaryIO = self._temporary.open("wb")

    def write(self, body: bytes) -> None:
        self._handle.write(body)
        self._handle.write(b"\n")

    def close(self) -> Path:
        self._handle.close()
        os.replace(self._temporary, self.path)
        return self.path


def write_outbox(
    outbox_dir: Path, destination: str, partition_key: str, bodies: list[bytes]
) -> Path:
    """Replace the hour's outbox file atomically with `bodies`."""
    writer = OutboxWriter(outbox_dir, destination, partition_key)
    for body in bodies:
        writer.write(body)
    return writer.close()
