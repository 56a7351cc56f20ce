"""The outbox: in dry-run mode, each request body a destination would POST, one per line."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import BinaryIO


def outbox_path(outbox_dir: Path, destination: str, partition_key: str) -> Path:
    """`HOME/outbox/<destination>/<partition key>.jsonl`."""
    return outbox_dir / destination / f"{partition_key}.jsonl"


class OutboxWriter:
    """Writes an hour's bodies as they are built; the file replaces the old one when published.

    A re-run rewrites the hour's file, never appends, and a reader never sees half of it.
    With a delivery log that records the hour: `finish` before the log commits (every
    body is in the unfinished file, or the error is raised and the log rolls back),
    `publish` after (the file takes the hour's name); `discard` drops the unfinished
    file of an hour that failed before its log committed, leaving the old one.
    """

    def __init__(self, outbox_dir: Path, destination: str, partition_key: str) -> None:
        self.path = outbox_path(outbox_dir, destination, partition_key)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._temporary = self.path.with_suffix(".jsonl.tmp")
        self._handle: BinaryIO = self._temporary.open("wb")

    def write(self, body: bytes) -> None:
        self._handle.write(body)
        self._handle.write(b"\n")

    def finish(self) -> None:
        """Write out every body and close the unfinished file (raises a failed write)."""
        self._handle.close()

    def publish(self) -> Path:
        """Put the finished file in place of the hour's old one. If this fails, the
        finished file stays where it is (`<hour>.jsonl.tmp`) and the error is raised."""
        os.replace(self._temporary, self.path)
        return self.path

    def discard(self) -> None:
        """Remove the unfinished file (the hour's old file stays)."""
        with contextlib.suppress(OSError):  # the failure that made the hour discard it
            self._handle.close()
        self._temporary.unlink(missing_ok=True)
