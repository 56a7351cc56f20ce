"""Small shared pieces for building platform events from canonical rows."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson
import pandas as pd

from conversion_platform.transform.normalise import is_sha256_hex, sha256_hex


def row_records(frame: pd.DataFrame) -> Iterator[dict[str, Any]]:
    """Each row as a dict with None for missing values and Python scalars."""
    columns = list(frame.columns)
    converted = {c: frame[c].astype(object).where(frame[c].notna(), None).tolist() for c in columns}
    for i in range(len(frame)):
        yield {c: converted[c][i] for c in columns}


def present(mapping: dict[str, Any]) -> dict[str, Any]:
    """The entries whose value is not None (nor an empty list)."""
    return {k: v for k, v in mapping.items() if v is not None and v != []}


def hashed(value: str | None, *, hash_plain: bool = False, as_list: bool = True) -> Any:
    """A hashed identifier for the platform: digests pass through, plain values are hashed
    when `hash_plain` (location fields are stored normalised, unhashed)."""
    if value is None:
        return None
    digest = value if is_sha256_hex(value) else (sha256_hex(value) if hash_plain else None)
    if digest is None:
        return None
    return [digest] if as_list else digest


def items_of(items: str | None) -> list[dict[str, Any]]:
    """The JSON array of items stored on a conversion."""
    if not items:
        return []
    try:
        parsed = orjson.loads(items)
    except orjson.JSONDecodeError:
        return []
    return [i for i in parsed if isinstance(i, dict)] if isinstance(parsed, list) else []
