"""The outbox: in dry-run mode, each request body a destination would POST, one per line."""

from __future__ import annotations

import os
from pathlib import Path


def outbox_path(outbox_dir: Path, destination: str, partition_key: str) -> Path:
    """`HOME/outbox/<destination>/<partition key>.jsonl`."""
    return outbox_dir / destination / f"{partition_key}.jsonl"


def write_outbox(
    outbox_dir: Path, destination: str, partition_key: str, bodies: list[bytes]
) -> Path:
    """Replace the hour's outbox file atomically (a re-run rewrites it, never appends)."""
    path = outbox_path(outbox_dir, destination, partition_key)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".jsonl.tmp")
    with temporary.open("wb") as handle:
        for body in bodies:
            handle.write(body)
            handle.write(b"\n")
    os.replace(temporary, path)
    return path
