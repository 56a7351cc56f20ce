"""Tests of the vectorised text predicates (`transform.text_checks`) and of the contract's
check kinds (`transform.pandera_checks`) against what Python says value by value.

Scope: SHA-256 digests (exact length, lowercase hex only, a trailing newline or a
non-ASCII character refused, missing values passing), lengths counted in code points as
Python counts them, the normalised blocklist match (surrounding whitespace, case, long
values with spaces around), the fallback for values Arrow can't hold (a non-string, a
lone surrogate), and the Dagster type of the validated asset: the frame validation
returned passes on its proof, any other frame is validated by pandera.
"""

from __future__ import annotations

import hashlib
from datetime import timedelta

import numpy as np
import pandas as pd
import pytest

from conversion_platform.transform.text_checks import (
    digest_prefixes,
    digests_in,
    is_sha256_hex,
    normalised_in,
    one_of,
    within_length,
)

DIGEST = hashlib.sha256(b"ana@example.com").hexdigest()


def text(*values: object) -> pd.Series:
    return pd.Series(list(values), dtype="string")


def test_sha256_hex_digests_pass_and_everything_else_fails() -> None:
    values = text(
        DIGEST,
        None,
        DIGEST.upper(),
        DIGEST[:-1],
        DIGEST + "0",
        DIGEST + "\n",
        DIGEST[:-2] + "é",  # 64 bytes in UTF-8, not hex
        "g" * 64,
        "",
    )
    assert is_sha256_hex(values).tolist() == [True, True] + [False] * 7


def test_sha256_of_values_arrow_cannot_hold_falls_back_to_python() -> None:
    values = pd.Series([DIGEST, 42, None, "\ud800" * 64], dtype=object)
    assert is_sha256_hex(values).tolist() == [True, False, True, False]


def test_lengths_are_counted_in_characters() -> None:
    values = text("é" * 256, "é" * 257, "x" * 256, None, "")
    assert within_length(values, 256).tolist() == [True, False, True, True, True]
    surrogate = pd.Series(["\ud800" * 3, "ok"], dtype=object)
    assert within_length(surrogate, 2).tolist() == [False, True]


@pytest.mark.parametrize(
    ("value", "blocked"),
    [
        ("null", True),
        ("  NULL \t", True),
        ("Undefined", True),
        ("n/a", True),
        ("nullable", False),
        (" mp_" + "a" * 40 + " ", False),
        ("mp_" + "a" * 40, False),
        ("\u00a0none\u00a0", True),  # non-breaking spaces strip in Python
        (None, False),
    ],
)
def test_normalised_blocklist_matches_as_python_strip_lower(
    value: str | None, blocked: bool
) -> None:
    wanted = {"", "null", "undefined", "none", "0", "n/a"}
    assert normalised_in(text(value, "mp_ok"), wanted).tolist() == [blocked, False]


def test_many_values_agree_with_python_value_by_value() -> None:
    rng = np.random.default_rng(3)
    alphabet = list("0123456789abcdefABCDEF \n-é")
    values = ["".join(rng.choice(alphabet, size=int(n))) for n in rng.integers(0, 70, size=2_000)]
    values += [hashlib.sha256(str(i).encode()).hexdigest() for i in range(500)]
    series = text(*values)
    expected_sha = [len(v) == 64 and all(c in "0123456789abcdef" for c in v) for v in values]
    assert is_sha256_hex(series).tolist() == expected_sha
    assert within_length(series, 40).tolist() == [len(v) <= 40 for v in values]
    blocked = {"0", "a", "ab"}
    assert normalised_in(series, blocked).tolist() == [v.strip().lower() in blocked for v in values]


def test_the_validated_frame_passes_the_dagster_type_on_its_proof_others_are_validated() -> None:
    import dagster as dg

    from conversion_platform.defs.validation_assets import ConversionFrame
    from conversion_platform.transform.dedupe import deduplicate_hour_frames
    from conversion_platform.transform.validate import proven_valid, validate_conversions
    from conversion_platform_tests.dedupe_support import at, copies_frame, copy

    frame = deduplicate_hour_frames(
        copies_frame([copy("server", at(10, 5), event_id="e-1", value=1.0, currency="USD")])
    )[0]
    valid = validate_conversions(frame, timedelta(days=7)).valid
    assert proven_valid(valid, timedelta(days=7))
    assert not proven_valid(valid, timedelta(days=1))  # proven for a looser contract only
    assert not proven_valid(valid.copy(), timedelta(days=7))
    context = dg.build_op_context()  # any context: the type check doesn't read it
    assert ConversionFrame.type_check(context, valid).success  # type: ignore[arg-type]
    assert ConversionFrame.type_check(context, valid.copy()).success  # type: ignore[arg-type]
    broken = valid.copy()
    broken["value"] = -1.0
    check = ConversionFrame.type_check(context, broken)  # type: ignore[arg-type]
    assert not check.success and "value_negative" in (check.description or "")
    grown = valid  # the same object with a column added is no longer the proven frame
    grown["extra"] = 1
    assert not proven_valid(grown, timedelta(days=7))


def test_digests_are_found_by_prefix_and_compared_whole() -> None:
    blocked = {hashlib.sha256(str(i).encode()).hexdigest() for i in range(1_000)}
    blocked.add("not-a-digest")
    one = next(iter(sorted(blocked - {"not-a-digest"})))
    same_prefix = one[:16] + ("0" if one[16] != "0" else "1") + one[17:]
    values = text(one, same_prefix, DIGEST, None, "not-a-digest", one.upper())
    found = digests_in(values, frozenset(blocked), digest_prefixes(blocked))
    assert found.tolist() == [True, False, False, False, True, False]
    objects = pd.Series([one, 7, None], dtype=object)  # Arrow can't hold it: Python
    assert digests_in(objects, frozenset(blocked), digest_prefixes(blocked)).tolist() == [
        True,
        False,
        False,
    ]
    assert not digests_in(text(one), frozenset(), digest_prefixes(set())).any()


def test_one_of_is_exact_and_lets_missing_values_pass() -> None:
    allowed = ("pixel", "server", "log")
    values = text("pixel", "Pixel", " log", None, "server", "")
    assert one_of(values, allowed).tolist() == [True, False, False, True, True, False]
    mixed = pd.Series(["log", 3, None], dtype=object)  # Arrow can't hold it: Python
    assert one_of(mixed, allowed).tolist() == [True, False, True]
