"""Vectorised predicates over text columns: one Arrow pass per column, no Python per value.

A text column of the model is Arrow-backed (`string[pyarrow]`, see the package's
`__init__`); a regular expression or `len` per value would cost about 0.5 µs each, which
a million-row hour pays for every column checked. Here the column's own Arrow array (or,
for a Python-backed column, one made by a C loop over its strings) is checked over its
buffers with numpy or Arrow compute.

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

from conversion_platform import events

SHA256_HEX_LENGTH = 64
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
#: Byte -> is a lowercase hex digit.
_HEX_DIGITS = b"0123456789abcdef"
_HEX_BYTE = np.zeros(256, dtype=bool)
_HEX_BYTE[np.frombuffer(_HEX_DIGITS, dtype=np.uint8)] = True


def _objects(values: pd.Series) -> np.ndarray:
    """The values as an object array (a `string` column's own, not a copy; NA as pandas has it)."""
    return np.asarray(values.array, dtype=object)


def _arrow(values: pd.Series) -> pa.Array | None:
    """The values as one Arrow `large_string` array, None when Arrow can't hold them."""
    try:
        return events.arrow_text(values)
    except (pa.ArrowException, UnicodeEncodeError):
        return None


def _values_at(values: pd.Series, rows: np.ndarray) -> list[object]:
    """The values of the given rows as Python objects (only those rows are converted)."""
    return values.array.take(rows).to_numpy(dtype=object).tolist()


def _python(values: pd.Series, passes: Callable[[object], bool]) -> np.ndarray:
    objects = _objects(values)
    missing = pd.isna(objects)
    return np.fromiter(
        (bool(m) or bool(passes(v)) for v, m in zip(objects, missing, strict=True)),
        dtype=bool,
        count=len(objects),
    )


def _hex_digest_bytes(array: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Which values are 64-byte hex digests, and those values' bytes as (n, 64) uint8."""
    lengths = pc.fill_null(pc.binary_length(array), 0).to_numpy(zero_copy_only=False)
    sized = lengths == SHA256_HEX_LENGTH
    if not sized.any():
        return sized, np.zeros((0, SHA256_HEX_LENGTH), dtype=np.uint8)
    digests = array.filter(pa.array(sized))
    start = int(np.frombuffer(digests.buffers()[1], dtype=np.int64)[digests.offset])
    data = np.frombuffer(
        digests.buffers()[2], dtype=np.uint8, count=SHA256_HEX_LENGTH * len(digests), offset=start
    ).reshape(-1, SHA256_HEX_LENGTH)
    return sized, data


def _all_hex(data: np.ndarray) -> np.ndarray:
    """Per row of (n, 64) bytes, whether every byte is a lowercase hex digit."""
    if not data.tobytes().translate(None, _HEX_DIGITS):
        return np.ones(len(data), dtype=bool)  # the usual case: one C pass over the bytes
    return _HEX_BYTE[data].all(axis=1)


def is_sha256_hex(values: pd.Series) -> np.ndarray:
    """True where a value is a lowercase hex SHA-256 digest (exactly 64 of `0-9a-f`)."""
    array = _arrow(values)
    if array is None:
        return _python(
            values, lambda v: isinstance(v, str) and _SHA256_HEX.fullmatch(v) is not None
        )
    ok = ~array.is_valid().to_numpy(zero_copy_only=False)
    sized, data = _hex_digest_bytes(array)
    # 64 bytes that are all hex digits are 64 ASCII hex characters
    ok[sized] = _all_hex(data)
    return ok


def _prefixes(data: np.ndarray) -> np.ndarray:
    """The first 16 hex digits (64 bits) of each digest, as uint64 (rows all hex digits)."""
    head = np.ascontiguousarray(data[:, :16]).tobytes().decode("ascii")
    return np.frombuffer(bytes.fromhex(head), dtype=">u8").astype(np.uint64)


def digests_in(values: pd.Series, digests: Collection[str], prefixes: pd.Index) -> np.ndarray:
    """True where a value is one of `digests` (hex SHA-256 strings; missing values: False).

    `prefixes` is `digest_prefixes(digests)`. A digest is looked up by its first 64 bits
    (an integer hash lookup); the rare values whose prefix matches are compared whole.
    Values that aren't hex digests are looked up in Python.
    """
    out = np.zeros(len(values), dtype=bool)
    array = _arrow(values)
    if array is None:
        check = np.flatnonzero(values.notna().to_numpy())
    else:
        sized, data = _hex_digest_bytes(array)
        is_hex = _all_hex(data)
        rows = np.flatnonzero(sized)[is_hex]
        hexed = np.zeros(len(values), dtype=bool)
        hexed[rows] = True
        candidate = np.zeros(len(values), dtype=bool)
        if len(prefixes) and len(rows):
            candidate[rows] = prefixes.get_indexer(_prefixes(data[is_hex])) >= 0
        other = array.is_valid().to_numpy(zero_copy_only=False) & ~hexed
        check = np.flatnonzero(candidate | other)
    wanted = digests if isinstance(digests, frozenset | set) else frozenset(digests)
    out[check] = [v in wanted for v in _values_at(values, check)]
    return out


def digest_prefixes(digests: Collection[str]) -> pd.Index:
    """The 64-bit prefixes of the hex digests among `digests`, as a hashed index (keep it:
    its hash table is built on first use and reused)."""
    hexed = [d for d in digests if _SHA256_HEX.fullmatch(d)]
    if not hexed:
        return pd.Index(np.zeros(0, dtype=np.uint64))
    data = np.frombuffer("".join(hexed).encode("ascii"), dtype=np.uint8).reshape(-1, 64)
    return pd.Index(np.unique(_prefixes(data)))


def one_of(values: pd.Series, allowed: Collection[str]) -> np.ndarray:
    """True where a value is one of `allowed` (exactly; missing values pass)."""
    array = _arrow(values)
    if array is None:
        wanted = frozenset(allowed)
        return _python(values, lambda v: v in wanted)
    found = pc.is_in(array, value_set=pa.array(sorted(allowed), type=pa.large_string()))
    return pc.fill_null(pc.or_kleene(found, pc.is_null(array)), True).to_numpy(zero_copy_only=False)


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
    out = np.zeros(len(values), dtype=bool)
    if not len(values) or not blocked:
        return out
    longest = max(len(b) for b in blocked)
    array = _arrow(values)
    if array is None:
        candidates = np.flatnonzero(values.notna().to_numpy())
    else:
        present = array.is_valid().to_numpy(zero_copy_only=False)
        short = pc.fill_null(pc.utf8_length(array), 0).to_numpy(zero_copy_only=False) <= longest
        plain_ends = pc.fill_null(
            pc.match_substring_regex(array, r"^[A-Za-z0-9].*[A-Za-z0-9]$"), False
        ).to_numpy(zero_copy_only=False)
        candidates = np.flatnonzero(present & (short | ~plain_ends))
    wanted = frozenset(blocked)
    out[candidates] = [str(v).strip().lower() in wanted for v in _values_at(values, candidates)]
    return out
