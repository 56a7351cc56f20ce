"""SQLAlchemy tables of the operational database.

Times are integer microseconds since the epoch (UTC), columns suffixed `_us`; see
`timecodes`. Personal data is never stored in plaintext: the landing table holds only
the hashed identity columns of the canonical model.
"""

from __future__ import annotations

import sqlalchemy as sa

from conversion_platform import events

metadata = sa.MetaData()


def _landing_columns() -> list[sa.Column]:
    columns: list[sa.Column] = [
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer, "sqlite"),
            primary_key=True,
            autoincrement=True,
        )
    ]
    for name in events.STORED_COLUMNS:
        if name in events.TIMESTAMP_COLUMNS:
            columns.append(sa.Column(f"{name}_us", sa.BigInteger, nullable=name != "received_at"))
        elif name in events.FLOAT_COLUMNS:
            columns.append(sa.Column(name, sa.Float))
        elif name in events.BOOL_COLUMNS:
            columns.append(sa.Column(name, sa.Boolean))
        else:
            columns.append(sa.Column(name, sa.Text))
    columns.append(sa.Column("site", sa.Text))
    return columns


#: What the collector commits before it acknowledges; read by `received_at` per hour.
landing_events = sa.Table(
    "landing_events",
    metadata,
    *_landing_columns(),
    sa.Index("ix_landing_events_received_at_us", "received_at_us"),
)

#: Every record that could not be used, with where it came from and why (redacted).
quarantine = sa.Table(
    "quarantine",
    metadata,
    sa.Column(
        "id",
        sa.BigInteger().with_variant(sa.Integer, "sqlite"),
        primary_key=True,
        autoincrement=True,
    ),
    sa.Column("stage", sa.Text, nullable=False),  # parse | collector | validation
    sa.Column("source", sa.Text, nullable=False),  # log | pixel | server
    sa.Column("hour_us", sa.BigInteger, nullable=False),
    sa.Column("origin", sa.Text, nullable=False),  # file:line, request, or event key
    sa.Column("event_id", sa.Text),
    sa.Column("event_name", sa.Text),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("raw_redacted", sa.Text),
    sa.Column("created_at_us", sa.BigInteger, nullable=False),
    sa.Index("ix_quarantine_hour_stage", "hour_us", "stage"),
)

#: Time range of each server-log file, so an hour opens only files that can hold it.
log_file_index = sa.Table(
    "log_file_index",
    metadata,
    sa.Column("path", sa.Text, primary_key=True),
    sa.Column("size_bytes", sa.BigInteger, nullable=False),
    sa.Column("mtime_ns", sa.BigInteger, nullable=False),
    sa.Column("first_time_us", sa.BigInteger),
    sa.Column("last_time_us", sa.BigInteger),
    sa.Column("lines", sa.BigInteger, nullable=False),
    sa.Column("indexed_at_us", sa.BigInteger, nullable=False),
)

#: Every key of every conversion an hour received, and which hour delivered that
#: conversion (`owner_hour_us`; equal to `hour_us` when this hour delivered it). See
#: `store.ledger` for how hours use it.
dedupe_ledger = sa.Table(
    "dedupe_ledger",
    metadata,
    sa.Column("match_key", sa.Text, primary_key=True),  # what another hour's copy looks up
    sa.Column("hour_us", sa.BigInteger, primary_key=True),  # the hour that received it
    sa.Column("dedupe_key", sa.Text, primary_key=True),  # the conversion in that hour
    sa.Column("kind", sa.Text, nullable=False),  # event_id | order_id | fingerprint
    sa.Column("event_id", sa.Text, nullable=False),
    sa.Column("first_event_time_us", sa.BigInteger),
    sa.Column("last_event_time_us", sa.BigInteger),
    sa.Column("owner_hour_us", sa.BigInteger, nullable=False),
    sa.Column("sources", sa.Text),
    sa.Column("value", sa.Float),
    sa.Column("recorded_at_us", sa.BigInteger, nullable=False),
    sa.Index("ix_dedupe_ledger_hour", "hour_us"),
    # On SQLite the primary key is the table (one B-tree fewer to write per claimed key).
    sqlite_with_rowid=False,
)

#: What deduplication did to each hour (the duplicate-rate check reads its history).
dedupe_hour_figures = sa.Table(
    "dedupe_hour_figures",
    metadata,
    sa.Column("hour_us", sa.BigInteger, primary_key=True),
    sa.Column("copies_in", sa.BigInteger, nullable=False),
    sa.Column("merged_copies", sa.BigInteger, nullable=False),
    sa.Column("late_duplicates", sa.BigInteger, nullable=False),
    sa.Column("delivered_by_later_hour", sa.BigInteger, nullable=False),
    sa.Column("late_backend_confirmations", sa.BigInteger, nullable=False),
    sa.Column("late_value_mismatches", sa.BigInteger, nullable=False),
    sa.Column("conversions_out", sa.BigInteger, nullable=False),
    sa.Column("duplicate_rate", sa.Float, nullable=False),
    sa.Column("recorded_at_us", sa.BigInteger, nullable=False),
)

#: Identity values dropped where data entered (an email without `@`, `undefined`, ...),
#: counted by hour, path and reason; the values themselves are never stored.
dropped_identifiers = sa.Table(
    "dropped_identifiers",
    metadata,
    sa.Column(
        "id",
        sa.BigInteger().with_variant(sa.Integer, "sqlite"),
        primary_key=True,
        autoincrement=True,
    ),
    sa.Column("hour_us", sa.BigInteger, nullable=False),
    sa.Column("source", sa.Text, nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("count", sa.BigInteger, nullable=False),
    sa.Column("recorded_at_us", sa.BigInteger, nullable=False),
    sa.Index("ix_dropped_identifiers_hour", "hour_us", "source"),
)

#: One row per request body sent (or written to the outbox) to a destination.
delivery_batches = sa.Table(
    "delivery_batches",
    metadata,
    sa.Column(
        "id",
        sa.BigInteger().with_variant(sa.Integer, "sqlite"),
        primary_key=True,
        autoincrement=True,
    ),
    sa.Column("destination", sa.Text, nullable=False),
    sa.Column("hour_us", sa.BigInteger, nullable=False),
    sa.Column("run_id", sa.Text),
    sa.Column("batch_number", sa.Integer, nullable=False),
    sa.Column("attempt", sa.Integer, nullable=False),
    sa.Column("mode", sa.Text, nullable=False),  # live | validate | dry_run
    sa.Column(
        "status", sa.Text, nullable=False
    ),  # delivered | partial | retryable | permanent | auth | dry_run | validated | pending_status
    sa.Column("http_status", sa.Integer),
    sa.Column("event_count", sa.Integer, nullable=False),
    sa.Column("event_ids", sa.Text, nullable=False),  # JSON array
    sa.Column("response", sa.Text),  # the platform's answer or error, truncated
    sa.Column("retry_after_s", sa.Float),
    sa.Column("platform_request_id", sa.Text),
    sa.Column("started_at_us", sa.BigInteger, nullable=False),
    sa.Column("finished_at_us", sa.BigInteger, nullable=False),
    # when a request the platform reports on later (Google) got its final per-event status
    sa.Column("resolved_at_us", sa.BigInteger),
    sa.Index("ix_delivery_batches_dest_hour", "destination", "hour_us"),
    sa.Index("ix_delivery_batches_dest_status", "destination", "status"),
)

#: Each event's latest outcome per destination: delivered at most once, ever.
delivery_events = sa.Table(
    "delivery_events",
    metadata,
    sa.Column("destination", sa.Text, primary_key=True),
    sa.Column("event_id", sa.Text, primary_key=True),
    sa.Column("event_name", sa.Text),
    sa.Column("hour_us", sa.BigInteger, nullable=False),
    # delivered | pending_status | unconfirmed | dry_run | validated | retryable | permanent
    # | expired | filtered | dead_letter
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("reason", sa.Text),
    sa.Column("batch_id", sa.BigInteger),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("match_quality", sa.Float),
    sa.Column("updated_at_us", sa.BigInteger, nullable=False),
    # An hour's rows of a destination, by status: the delivery report counts them from
    # this index alone, without reading a table row per event.
    sa.Index("ix_delivery_events_dest_hour_status", "destination", "hour_us", "status"),
    # On SQLite the primary key is the table: an hour writes a row per event and
    # destination, and one B-tree fewer costs a third less (databases made before keep
    # their rowid table, which works the same). Tried and put back: a rowid table made
    # a dry-run hour's log cheaper to write (its chunks' random ids then land only in
    # the primary key's narrow index: 784,000 outcomes in 2.5-2.7 s of SQLite against
    # 4.2-4.6 s), but SQLite's planner, without statistics, then serves statements such
    # as Google's request-status update (`destination = ? AND event_id IN (...) AND
    # status = ?`) from the status index, reading every pending event of the
    # destination: a 48-hour backfill's Google step took 38-47 s against 30 s.
    sqlite_with_rowid=False,
)


# --- identity graph ---------------------------------------------------------------------------
# The persistent identity graph (transform/identity.py updates it hour by hour, in order).
# Identifiers are `mpid` (as received) and SHA-256 digests of email, phone and external id:
# nothing here is plaintext personal data. Identifiers seen together in a consented event
# belong to one person; a merge keeps the older person's id and is recorded. Click ids
# are attributes of the person, kept with the time first seen. Person ids start with the
# hour they were created, so an hour's new persons sit together in every index.
# On SQLite these tables are WITHOUT ROWID: rows live in the primary key's b-tree, one
# tree less to write for each of the hundreds of thousands of rows an hour can add.

#: One row per identifier ever linked or seen with a click id; `person_id` is its person.
identity_identifiers = sa.Table(
    "identity_identifiers",
    metadata,
    sa.Column("kind", sa.Text, primary_key=True),  # mpid | email | phone | external_id
    sa.Column("value", sa.Text, primary_key=True),  # mpid as received, else the digest
    # the other hashed form: Google's dotless gmail digest / the digits-only phone digest
    sa.Column("variant", sa.Text),
    # NULL only for an identifier that may not link (see `linkable`) and has no person
    sa.Column("person_id", sa.Text),
    # False once the identifier was seen with more identifiers of one kind than a person may
    # have (a shared device, a shop's own test address): it links nothing from then on
    sa.Column("linkable", sa.Boolean, nullable=False),
    sa.Column("first_seen_us", sa.BigInteger, nullable=False),
    sa.Column("first_hour_us", sa.BigInteger, nullable=False),
    sa.Index("ix_identity_identifiers_person", "person_id"),
    sqlite_with_rowid=False,
)

#: One row per current person: how many identifiers of each kind it holds (the caps), and
#: the contact identifiers a conversion of this person is enriched with (its earliest seen
#: email, phone and customer id, as the digests each platform wants).
identity_persons = sa.Table(
    "identity_persons",
    metadata,
    sa.Column("person_id", sa.Text, primary_key=True),
    sa.Column("first_seen_us", sa.BigInteger, nullable=False),
    sa.Column("created_hour_us", sa.BigInteger, nullable=False),
    sa.Column("mpid_count", sa.Integer, nullable=False),
    sa.Column("email_count", sa.Integer, nullable=False),
    sa.Column("phone_count", sa.Integer, nullable=False),
    sa.Column("external_id_count", sa.Integer, nullable=False),
    sa.Column("email_sha256", sa.Text),
    sa.Column("email_google_sha256", sa.Text),
    sa.Column("phone_sha256", sa.Text),
    sa.Column("phone_digits_sha256", sa.Text),
    sa.Column("external_id_sha256", sa.Text),
    sa.Column("updated_hour_us", sa.BigInteger, nullable=False),
    sqlite_with_rowid=False,
)

#: Every merge: `merged_person_id` no longer exists and its identifiers moved to `into`.
identity_merges = sa.Table(
    "identity_merges",
    metadata,
    sa.Column("merged_person_id", sa.Text, primary_key=True),
    sa.Column("into_person_id", sa.Text, nullable=False),
    sa.Column("hour_us", sa.BigInteger, nullable=False),
    sa.Column("identifiers_moved", sa.Integer, nullable=False),
    sa.Column("merged_at_us", sa.BigInteger, nullable=False),
    sa.Index("ix_identity_merges_into", "into_person_id"),
    sqlite_with_rowid=False,
)

#: Click ids (and Meta's fbc cookie) a person was seen with, with the time first seen.
#: Keyed by person first: enrichment reads a person's clicks as one range of the b-tree.
identity_click_ids = sa.Table(
    "identity_click_ids",
    metadata,
    sa.Column("person_id", sa.Text, primary_key=True),
    sa.Column("click_type", sa.Text, primary_key=True),  # gclid | fbclid | fbc | ttclid | ...
    sa.Column("click_id", sa.Text, primary_key=True),
    sa.Column("first_seen_us", sa.BigInteger, nullable=False),
    sa.Column("first_hour_us", sa.BigInteger, nullable=False),
    sqlite_with_rowid=False,
)

#: One row: taken first in every graph update, so updates never interleave.
identity_graph_state = sa.Table(
    "identity_graph_state",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("last_hour_us", sa.BigInteger),
    sa.Column("updated_at_us", sa.BigInteger, nullable=False),
)
