"""Tables of the operations layer: the retry schedule, dead letters and destination circuits.

They live on the operational database's one `MetaData` (created with the rest by
`database.create_database_engine`). Times are integer microseconds (`*_us`), as elsewhere.
No secret is ever stored: a circuit remembers only a short fingerprint of the credentials.
"""

from __future__ import annotations

import sqlalchemy as sa

from conversion_platform.store.delivery_log import EVENT_PERMANENT
from conversion_platform.store.tables import delivery_events, metadata

#: The retry sensor asks each minute for events waiting (retryable) or just rejected
#: (permanent): a few among millions delivered, found by this index instead of a scan.
delivery_events_by_status = sa.Index(
    "ix_delivery_events_status",
    delivery_events.c.status,
    delivery_events.c.destination,
    delivery_events.c.hour_us,
)

#: Rejected events by when they were recorded: the retry sensor's sweep for rejections a
#: run did not dead-letter reads the last days' entries, where the status index alone
#: made it look at every rejection ever recorded, each minute. Partial: only rejected
#: events are in it, so the other outcomes' writes don't pay for it.
_REJECTED = sa.literal_column(f"'{EVENT_PERMANENT}'")
delivery_events_rejected_by_update = sa.Index(
    "ix_delivery_events_rejected_updated",
    delivery_events.c.updated_at_us,
    sqlite_where=delivery_events.c.status == _REJECTED,
    postgresql_where=delivery_events.c.status == _REJECTED,
)

#: The retry sensor's schedule for each destination-hour that had undelivered events.
delivery_retries = sa.Table(
    "delivery_retries",
    metadata,
    sa.Column("destination", sa.Text, primary_key=True),
    sa.Column("hour_us", sa.BigInteger, primary_key=True),
    # waiting | held (circuit open) | resolved | dead_lettered
    sa.Column("state", sa.Text, nullable=False),
    # when this cycle of retries began (first noticed, or reset by a replay / circuit close)
    sa.Column("cycle_started_at_us", sa.BigInteger, nullable=False),
    sa.Column("retries_requested", sa.Integer, nullable=False, default=0),
    sa.Column("last_requested_at_us", sa.BigInteger),
    sa.Column("last_run_key", sa.Text),
    sa.Column("next_attempt_at_us", sa.BigInteger),
    sa.Column("pending_events", sa.Integer, nullable=False, default=0),
    sa.Column("last_error", sa.Text),
    sa.Column("updated_at_us", sa.BigInteger, nullable=False),
)

#: Events given up on for a destination: rejected permanently, or out of retries.
dead_letters = sa.Table(
    "dead_letters",
    metadata,
    sa.Column("destination", sa.Text, primary_key=True),
    sa.Column("event_id", sa.Text, primary_key=True),
    sa.Column("event_name", sa.Text),
    sa.Column("hour_us", sa.BigInteger, nullable=False),
    sa.Column("kind", sa.Text, nullable=False),  # rejected | retries_exhausted
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("dead_lettered_at_us", sa.BigInteger, nullable=False),
    sa.Index("ix_dead_letters_dest_hour", "destination", "hour_us"),
)

#: One row per destination whose circuit was ever opened by an auth failure.
destination_circuits = sa.Table(
    "destination_circuits",
    metadata,
    sa.Column("destination", sa.Text, primary_key=True),
    sa.Column("state", sa.Text, nullable=False),  # open | closed
    sa.Column("reason", sa.Text),
    # a short SHA-256 digest of the credential values in force when it opened, never the values
    sa.Column("credential_fingerprint", sa.Text),
    # the newest auth-failed batch already acted on, so a reset is not undone by an old failure
    sa.Column("last_auth_batch_id", sa.BigInteger, nullable=False, default=0),
    sa.Column("opened_at_us", sa.BigInteger),
    sa.Column("closed_at_us", sa.BigInteger),
    sa.Column("closed_by", sa.Text),  # credentials_changed | operator
    sa.Column("updated_at_us", sa.BigInteger, nullable=False),
)


def ensure_operations_indexes(connectable: sa.engine.Engine) -> None:
    """Create the delivery log's indexes on a database whose table predates them.

    Idempotent and safe when several processes open the database at once (`IF NOT
    EXISTS`); a look at the catalogue when nothing is to do. On a large log the first
    open after an upgrade builds the index once, holding the write lock meanwhile. The
    (destination, hour) index the (destination, hour, status) one replaced is left in
    place, for processes of the previous version still running: once none is, an
    operator may drop `ix_delivery_events_dest_hour` (it only costs writes).
    """
    present = {i["name"] for i in sa.inspect(connectable).get_indexes(delivery_events.name)}
    missing = [index for index in delivery_events.indexes if index.name not in present]
    if not missing:
        return
    with connectable.begin() as conn:
        for index in missing:
            conn.execute(sa.schema.CreateIndex(index, if_not_exists=True))
