"""The column-wise JSON builder against orjson, object by object."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import orjson
import pyarrow as pa
import pytest

from conversion_platform.destinations import json_columns as jc


def _texts(rng: np.random.Generator, n: int, present: float) -> list[str | None]:
    pool = ["a", 'quote " and \\ backslash', "tab\there", "é ünïcode", "x" * 40]
    return [str(rng.choice(pool)) if rng.random() < present else None for _ in range(n)]


@pytest.mark.parametrize("seed", range(6))
def test_objects_match_orjson_whatever_is_missing(seed: int) -> None:
    """Members present or absent in every combination (optional constants next to each
    other, nested objects, always-present members) give exactly orjson's text."""
    rng = np.random.default_rng(seed)
    n = 300
    names = _texts(rng, n, 0.5)
    numbers = [float(v) if rng.random() < 0.6 else None for v in rng.normal(0, 100, n)]
    inner_a, inner_b = _texts(rng, n, 0.3), _texts(rng, n, 0.7)
    flags = [rng.random() < 0.5 for _ in range(8)]
    wheres = [rng.random(n) < 0.5 for _ in range(8)]
    child = (
        jc.JsonObject(n)
        .string("a", pa.array(inner_a, jc.TEXT))
        .string_list("b", pa.array(inner_b, jc.TEXT))
    )
    event = jc.JsonObject(n)
    if flags[0]:
        event.constant("first", '"always"')
    event.string("name", pa.array(names, jc.TEXT))
    for k in range(8):  # eight optional constants side by side: 2^8 combinations
        event.constant(f"c{k}", str(k), wheres[k])
    event.number("value", pa.array(numbers, pa.float64()))
    event.object("child", child, always=flags[1])
    event.constant("last", "true", wheres[0] if flags[2] else None)
    built = event.build().to_pylist()

    for i in range(n):
        expected: dict[str, object] = {}
        if flags[0]:
            expected["first"] = "always"
        if names[i] is not None:
            expected["name"] = names[i]
        for k in range(8):
            if wheres[k][i]:
                expected[f"c{k}"] = k
        if numbers[i] is not None:
            expected["value"] = numbers[i]
        inner: dict[str, object] = {}
        if inner_a[i] is not None:
            inner["a"] = inner_a[i]
        if inner_b[i] is not None:
            inner["b"] = [inner_b[i]]
        if inner or flags[1]:
            expected["child"] = inner
        if not flags[2] or wheres[0][i]:
            expected["last"] = True
        assert orjson.loads(built[i]) == expected
        assert list(orjson.loads(built[i])) == list(expected)  # member order kept


@pytest.mark.parametrize("pattern", ["%Y-%m-%dT%H:%M:%SZ", "%Y-%m-%d %H:%M:%S+00:00"])
def test_times_are_each_seconds_own_text_in_any_order_and_repeated(pattern: str) -> None:
    rng = np.random.default_rng(3)
    start = 1_764_547_200  # 2025-12-01T00:00:00Z
    # An hour's seconds, repeated and out of order, with a few from other days.
    seconds = np.concatenate(
        [rng.integers(start, start + 3_600, 2_000), [start - 86_400 * 400, start + 59]]
    )
    rng.shuffle(seconds)
    texts = jc.formatted_times(seconds, pattern).to_pylist()
    assert texts == [datetime.fromtimestamp(int(s), tz=UTC).strftime(pattern) for s in seconds]
    assert jc.formatted_times(np.array([], dtype=np.int64), pattern).to_pylist() == []
