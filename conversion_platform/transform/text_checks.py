"""Vectorised predicates over text columns: one Arrow pass per column, no Python per value.

A text column of the model holds one Python `str` per cell (`string[python]`); a regular
expression or `len` per value costs about 0.5 µs each, which a million-row hour pays
for every column checked. Here a column is turned into one Arrow array (a C loop over
the strings) and the predicate runs over its buffers with numpy or Arrow compute.

Each predicate returns a numpy bool array, True where the value passes; missing values
pass (the schema's `nullable` says whether they may be missing). A column Arrow can't
hold (a value that isn't a string, or can't be encoded as UTF-8) falls back to the same
predicate in Python, value by value, so the answer never depends on the path taken.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

SHA256_HEX_LENGTH = 64
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
#: Byte -> is a lowercase hex digit.
_HEX_BYTE = np.zeros(256, dtype=bool)
_HEX_BYTE[np.frombuffer(b"0123456789abcdef", dtype=np.uint8)] = True


def _arrow(values: pd.Series) -> pa.Array | None:
    """The values as one Arrow `large_string` array, None when Arrow can't hold them."""
    try:
        array = pa.array(
            values.to_numpy(dtype=object, na_value=None), type=pa.large_string(), from_pandas=True
        )
    except (pa.ArrowException, UnicodeEncodeError):
        return None
    return array


def _python(values: pd.Series, passes: Callable[[object], bool]) -> np.ndarray:
    objects = values.to_numpy(dtype=object, na_value=None)
    return np.fromiter(
        (v is None or bool(passes(v)) for v in objects), dtype=bool, count=len(objects)
    )


def is_sha256_hex(values: pd.Series) -> np.ndarray:
    """True where a value is a lowercase hex SHA-256 digest (exactly 64 of `0-9a-f`)."""
    array = _arrow(values)
    if array is None:
        return _python(
            values, lambda v: isinstance(v, str) and _SHA256_HEX.fullmatch(v) is not None
        )
    ok = ~array.is_valid().to_numpy(zero_copy_only=False)
    lengths = pc.fill_null(pc.binary_length(array), 0).to_numpy(zero_copy_only=False)
    sized = lengths == SHA256_HEX_LENGTH
    if sized.any():
        # 64 bytes that are all hex digits are 64 ASCII hex characters
        digests = array.filter(pa.array(sized))
        start = int(np.frombuffer(digests.buffers()[1], dtype=np.int64)[digests.offset])
        data = np.frombuffer(
            digests.buffers()[2],
            dtype=np.uint8,
            count=SHA256_HEX_LENGTH * len(digests),
            offset=start,
        )
        ok[sized] = _HEX_BYTE[data].reshape(-1, SHA256_HEX_LENGTH).all(axis=1)
    return ok


def within_length(values: pd.Series, limit: int) -> np.ndarray:
    """True where a value has at most `limit` characters (code points, as Python counts)."""
    array = _arrow(values)
    if array is None:
        return _python(values, lambda v: len(str(v)) <= limit)
    lengths = pc.fill_null(pc.utf8_length(array), 0).to_numpy(zero_copy_only=False)
    return lengths <= limit


def normalised_in(values: pd.Series, blocked: Collection[str]) -> np.ndarray:
    """True where `value.strip().lower()` is one of `blocked` (missing values: False).

    Only short values or values with a non-alphanumeric end can strip and lower to a
    short blocked value; those few are compared in Python, exactly as `str` does it.
    """
    objects = values.to_numpy(dtype=object, na_value=None)
    out = np.zeros(len(objects), dtype=bool)
    if not len(objects) or not blocked:
        return out
    longest = max(len(b) for b in blocked)
    array = _arrow(values)
    if array is None:
        candidates = np.flatnonzero(pd.notna(objects))
    else:
        present = array.is_valid().to_numpy(zero_copy_only=False)
        short = pc.fill_null(pc.utf8_length(array), 0).to_numpy(zero_copy_only=False) <= longest
        plain_ends = pc.fill_null(
            pc.match_substring_regex(array, r"^[A-Za-z0-9].*[A-Za-z0-9]$"), False
        ).to_numpy(zero_copy_only=False)
        candidates = np.flatnonzero(present & (short | ~plain_ends))
    wanted = frozenset(blocked)
    out[candidates] = [str(objects[i]).strip().lower() in wanted for i in candidates]
    return out
