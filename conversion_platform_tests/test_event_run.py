"""Request bodies cut from an encoded chunk (`delivery.EventRun`).

Scope: whatever events can't be sent (a null object, or an object left out, such as an
event in the future), whatever events were carried in from the previous chunk, and
however the batches are cut (runs of events or any positions), and whether the encoder
built its objects with a comma after each or bare, each batch's body is
exactly its events' JSON objects joined by commas, in order, with their ids; a carried
event's object comes back whole.
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from conversion_platform.destinations import json_columns as jc
from conversion_platform.destinations.delivery import Carry, EventRun

#: (the event's JSON object or None when it can't be encoded, whether it is kept)
_EVENT = st.tuples(
    st.one_of(
        st.none(),
        st.builds(
            lambda n, text: json.dumps({"n": n, "t": text}, separators=(",", ":")),
            st.integers(0, 10**6),
            st.text(max_size=8),
        ),
    ),
    st.booleans(),
)


@settings(max_examples=300, deadline=None)
@given(
    events=st.lists(_EVENT, max_size=30),
    carried=st.integers(0, 3),
    cuts=st.lists(st.integers(1, 7), max_size=10),
    scattered=st.lists(st.integers(0, 10**6), max_size=6),
    comma_after=st.booleans(),
)
def test_each_body_is_its_events_objects_joined_by_commas(
    events: list[tuple[str | None, bool]],
    carried: int,
    cuts: list[int],
    scattered: list[int],
    comma_after: bool,
) -> None:
    objects = [obj for obj, _ in events]
    keep = np.array([obj is not None and kept for obj, kept in events], dtype=bool)
    ids = [f"e{i}" for i in range(len(events))]
    carry = Carry(
        [f"c{i}" for i in range(carried)],
        [f'{{"carried":{i}}}'.encode() for i in range(carried)],
        None,
        [None] * carried,
        [None] * carried,
    )
    # As the encoders build them (each object followed by a comma), or bare.
    built = [None if o is None else o + ("," if comma_after else "") for o in objects]
    run = EventRun(
        [ids[i] for i in np.flatnonzero(keep)],
        pa.array(built, type=jc.TEXT),
        None,
        carry,
        keep=keep,
        comma_after=comma_after,
    )
    # What each position of the run holds: the carried events, then the kept ones.
    expected = list(zip(carry.event_ids, carry.pieces, strict=True)) + [
        (ids[i], str(objects[i]).encode()) for i in np.flatnonzero(keep)
    ]
    assert len(run) == len(expected)

    def check(positions: range | list[int]) -> None:
        batch = run.batch(0, positions)
        assert batch.event_ids == [expected[i][0] for i in positions]
        assert batch.events_json == b",".join(expected[i][1] for i in positions)
        json.loads(batch.json_array())  # a JSON array as it will be sent

    start = 0
    for size in [*cuts, len(run)]:  # runs of events, the last one up to the end
        stop = min(start + size, len(run))
        if start < stop:
            check(range(start, stop))
        start = stop
    if len(run):
        check(sorted({p % len(run) for p in scattered}))  # any positions
        assert run.carry(range(len(run) - 1, len(run))).pieces == [expected[-1][1]]
