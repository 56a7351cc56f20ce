"""Identity resolution of each hour: update the persistent graph, enrich, score.

Per hour, in order, in one transaction:

1. junk identifiers (the blocklist in `identity_rules`) are removed from the rows;
2. events allowed to carry personal data (`ad_user_data` consent, see `consent.py`) link
   the identifiers they hold (mpid, hashed email, phone, external id) in the graph, and
   record their click ids; events without consent take no part;
3. each consented conversion gets its person (`person_id`) and is enriched with the
   person's identifiers and recent click ids (`enrichment.py`);
4. every row is scored per destination (`match_quality.py`), and the hour's figures say
   how many conversions had a strong key before and after enrichment: the uplift.

Re-running an hour changes nothing in the graph (links are sets, merges are already
done), so its result is the same.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

import numpy as np
import pandas as pd
from sqlalchemy.engine import Connection, Engine

from conversion_platform import events
from conversion_platform.store import identity_graph as graph_store
from conversion_platform.store.timecodes import to_micros, utc_instants
from conversion_platform.transform.consent import personal_data_allowed
from conversion_platform.transform.enrichment import (
    CONTACT_FILLS,
    ENRICHABLE_COLUMNS,
    enrich_click_ids,
    enrich_contacts,
    enriched_labels,
)
from conversion_platform.transform.identity_graph import collect_nodes, plan_hour
from conversion_platform.transform.identity_rules import (
    KIND_COLUMNS,
    KINDS,
    VARIANT_COLUMNS,
    IdentityRules,
)
from conversion_platform.transform.match_quality import (
    KEY_RELEVANCE,
    PRESENCE_COLUMNS,
    presence_from_notna,
    score_columns,
    strong_key_counts,
)

DEDUPED_COLUMNS: tuple[str, ...] = (*events.CANONICAL_COLUMNS, *events.STAGE_COLUMNS["dedupe"])
RESOLVED_COLUMNS: tuple[str, ...] = (*DEDUPED_COLUMNS, *events.STAGE_COLUMNS["identity"])


@dataclass
class IdentityResult:
    """The window's resolved rows and, per hour, the figures the UI plots."""

    frame: pd.DataFrame
    per_hour: dict[datetime, dict[str, float | int]] = field(default_factory=dict)


def _deduped_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """The hour's rows in the deduplicated model (conformed only if needed) as a frame of
    its own whose column arrays may be the caller's: resolution replaces columns, never
    writes into them, so the caller's frame is unchanged without a copy of every cell."""
    dtypes = events.column_dtypes(DEDUPED_COLUMNS)
    if list(frame.columns) == list(DEDUPED_COLUMNS) and all(
        str(frame[c].dtype) == dtypes[c] for c in DEDUPED_COLUMNS
    ):
        out = frame.copy(deep=False)
        out.index = pd.RangeIndex(len(out))
        return out
    return events.conform(frame.reset_index(drop=True), DEDUPED_COLUMNS)


def _times_us(frame: pd.DataFrame) -> np.ndarray:
    """Event times as integer microseconds since the epoch, whatever the column's unit."""
    times = utc_instants(frame["event_time"]).dt.as_unit("us")
    return times.astype("int64").to_numpy(np.int64)


def remove_junk(frame: pd.DataFrame, rules: IdentityRules) -> int:
    """Blank blocked identifier values (and their variants) in `frame`, by replacing the
    columns (their arrays may be shared with another frame); returns how many."""
    removed = 0
    for kind in KINDS:
        columns = [KIND_COLUMNS[kind]]
        if kind in VARIANT_COLUMNS:
            columns.append(VARIANT_COLUMNS[kind])
        mask = np.zeros(len(frame), dtype=bool)
        for column in columns:
            mask |= rules.blocked_mask(kind, frame[column]).to_numpy()
        if mask.any():
            removed += int(mask.sum())
            for column in columns:
                frame[column] = frame[column].mask(mask)
    return removed


def _lookup_nodes(conn: Connection, nodes) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # type: ignore[no-untyped-def]
    """Per node: stored?, its stored person, its stored linkability (True when new)."""
    stored = np.zeros(nodes.size, dtype=bool)
    person = np.full(nodes.size, None, dtype=object)
    linkable = np.ones(nodes.size, dtype=bool)
    for k, kind in enumerate(KINDS):
        mine = np.flatnonzero(nodes.kind == k)
        if not len(mine):
            continue
        found = graph_store.lookup_identifiers(conn, kind, nodes.value[mine].tolist())
        if found.empty:
            continue
        position = pd.Index(nodes.value[mine]).get_indexer(found["value"])
        at = mine[position]
        stored[at] = True
        person[at] = found["person_id"].to_numpy(dtype=object)
        linkable[at] = found["linkable"].astype(bool).to_numpy()
    return stored, person, linkable


def _click_rows(
    values: dict[str, np.ndarray],
    notna: dict[str, np.ndarray],
    rows: np.ndarray,
    row_person: np.ndarray,
    times_us: np.ndarray,
    hour_us: int,
) -> pd.DataFrame:
    """The click ids of the linked rows, on each row's person, first sighting per click id."""
    parts = []
    has_person = pd.notna(row_person)
    for click_type, clicks in values.items():
        at = rows[notna[click_type][rows] & has_person[rows]]
        if len(at):
            parts.append(
                pd.DataFrame(
                    {
                        "person_id": row_person[at],
                        "click_type": click_type,
                        "click_id": clicks[at],
                        "first_seen_us": times_us[at],
                    }
                )
            )
    if not parts:
        return pd.DataFrame()
    clicks = pd.concat(parts, ignore_index=True)
    clicks = clicks.groupby(["person_id", "click_type", "click_id"], as_index=False, sort=False)[
        "first_seen_us"
    ].min()
    clicks["first_hour_us"] = hour_us
    return clicks


def resolve_hour(
    conn: Connection,
    frame: pd.DataFrame,
    hour: datetime,
    rules: IdentityRules,
    consent_required: bool = False,
) -> tuple[pd.DataFrame, dict[str, float | int]]:
    """Update the graph with one hour's rows, then enrich and score them (caller's transaction)."""
    frame = _deduped_frame(frame)
    hour_us = to_micros(hour)
    graph_store.lock_graph(conn, hour_us)
    n = len(frame)
    allowed = personal_data_allowed(frame, consent_required).to_numpy()
    junk = remove_junk(frame, rules)
    times_us = _times_us(frame) if n else np.zeros(0, dtype=np.int64)
    notna = {c: frame[c].notna().to_numpy() for c in PRESENCE_COLUMNS if c in frame.columns}
    presence_before = presence_from_notna(notna, n, allowed)

    # The hour's click ids and the columns enrichment fills, as object arrays: read once,
    # written back once.
    click_columns = [c for c in rules.click_windows if c in frame.columns]
    fill_columns = [*ENRICHABLE_COLUMNS, *click_columns]
    values = {c: frame[c].to_numpy(dtype=object, na_value=None) for c in fill_columns}
    for column in ENRICHABLE_COLUMNS:
        notna.setdefault(column, pd.notna(values[column]))

    # The graph: only rows allowed to carry personal data link anything.
    rows = np.flatnonzero(allowed)
    link_columns = [*KIND_COLUMNS.values(), *VARIANT_COLUMNS.values()]
    nodes = collect_nodes(frame[link_columns].iloc[rows], times_us[rows])
    stored, stored_person, stored_linkable = _lookup_nodes(conn, nodes)
    row_has_click = np.logical_or.reduce(
        [notna[c][rows] for c in click_columns] or [np.zeros(len(rows), dtype=bool)]
    )
    plan = plan_hour(
        nodes,
        stored,
        stored_person,
        stored_linkable,
        row_has_click,
        times_us[rows],
        lambda ids: graph_store.read_persons(conn, ids),
        rules,
        hour_us,
    )
    graph_store.record_merges(conn, plan.merges, hour_us)
    graph_store.insert_persons(conn, plan.new_persons)
    graph_store.update_persons(conn, plan.updated_persons)
    graph_store.insert_identifiers(conn, plan.new_identifiers)
    graph_store.mark_unlinkable(conn, plan.unlinkable)

    row_person = np.full(n, None, dtype=object)
    has_anchor = plan.anchor >= 0
    row_person[rows[has_anchor]] = plan.node_person[plan.anchor[has_anchor]]
    frame["person_id"] = events.string_array(row_person)
    clicks = _click_rows(
        {c: values[c] for c in click_columns}, notna, rows, row_person, times_us, hour_us
    )
    graph_store.upsert_click_ids(conn, clicks)

    # Enrichment: consented conversions with a person.
    conversion = (frame["event_name"] != events.PAGE_VIEW).fillna(False).to_numpy()
    targets = np.flatnonzero(allowed & conversion & pd.notna(row_person))
    filled: dict[str, np.ndarray] = {}
    if len(targets):
        person_ids = sorted(set(row_person[targets]))
        persons = graph_store.read_persons(conn, person_ids)
        filled.update(enrich_contacts(values, targets, row_person, persons))
        longest = max((w for w in rules.click_windows.values()), default=timedelta(0))
        clicks_known = graph_store.read_person_clicks(
            conn,
            person_ids,
            int(times_us[targets].min() - longest.total_seconds() * 1_000_000),
            int(times_us[targets].max()),
        )
        filled.update(enrich_click_ids(values, targets, row_person, times_us, clicks_known, rules))
        for name in filled:
            for column in filter(None, CONTACT_FILLS.get(name, (name,))):
                frame[column] = events.string_array(values[column])
                if column in notna:
                    notna[column] = notna[column].copy()
                    notna[column][filled[name]] = True
    presence_after = presence_from_notna(notna, n, allowed)
    frame["strong_keys_before"] = strong_key_counts(presence_before)
    frame["strong_keys_after"] = strong_key_counts(presence_after)
    for column, scores in score_columns(presence_after).items():
        frame[column] = scores
    frame["enriched_fields"] = enriched_labels(n, filled)
    figures = hour_figures(frame, conversion, presence_before, presence_after)
    figures.update(plan.figures)
    figures["junk_identifiers_removed"] = junk
    figures["events_without_consent"] = int((~allowed).sum())
    figures["conversions_enriched"] = int(frame["enriched_fields"].notna().sum())
    # The identity columns were added in the model's order: no copy needed to conform.
    if list(frame.columns) != list(RESOLVED_COLUMNS):
        frame = events.conform(frame, RESOLVED_COLUMNS)
    return frame, figures


def hour_figures(
    frame: pd.DataFrame,
    conversion: np.ndarray,
    before: dict[str, np.ndarray],
    after: dict[str, np.ndarray],
) -> dict[str, float | int]:
    """Conversions with a strong key before and after enrichment, and mean scores."""
    total = int(conversion.sum())

    def share(count: int) -> float:
        return round(count / total, 4) if total else 0.0

    strong_before = int((strong_key_counts(before)[conversion] > 0).sum())
    strong_after = int((strong_key_counts(after)[conversion] > 0).sum())
    figures: dict[str, float | int] = {
        "conversions": total,
        "with_strong_key_before": strong_before,
        "with_strong_key_after": strong_after,
        "strong_key_share_before": share(strong_before),
        "strong_key_share_after": share(strong_after),
        # the answer to "how many more conversions can a platform match", in percent
        "matched_uplift_pct": round(100 * (strong_after - strong_before) / strong_before, 2)
        if strong_before
        else 0.0,
        "mean_match_quality": round(float(frame["match_quality"][conversion].mean()), 3)
        if total
        else 0.0,
    }
    for platform in events.MATCH_QUALITY_PLATFORMS:
        if platform not in KEY_RELEVANCE:
            continue
        column = f"match_quality_{platform}"
        mine_before = int((strong_key_counts(before, platform)[conversion] > 0).sum())
        mine_after = int((strong_key_counts(after, platform)[conversion] > 0).sum())
        figures[f"mean_{column}"] = (
            round(float(frame[column][conversion].mean()), 3) if total else 0.0
        )
        figures[f"strong_key_share_before_{platform}"] = share(mine_before)
        figures[f"strong_key_share_after_{platform}"] = share(mine_after)
    return figures


def resolve_hours(
    engine: Engine,
    frame: pd.DataFrame,
    hours: list[datetime],
    rules: IdentityRules,
    consent_required: bool = False,
) -> IdentityResult:
    """Resolve each hour of `frame` in order, each in its own transaction."""
    by_hour = events.frames_by_hour(frame)
    frames: list[pd.DataFrame] = []
    per_hour: dict[datetime, dict[str, float | int]] = {}
    for hour in sorted(hours):
        group = by_hour.get(pd.Timestamp(hour), frame.iloc[0:0])
        # One transaction per hour: the graph moves hour by hour, never half an hour.
        with engine.begin() as conn:
            resolved, figures = resolve_hour(conn, group, hour, rules, consent_required)
        frames.append(resolved)
        per_hour[hour] = figures
    if len(frames) == 1:
        return IdentityResult(frames[0], per_hour)  # one hour: already in the model
    out = pd.concat(frames, ignore_index=True) if frames else events.empty_frame(RESOLVED_COLUMNS)
    return IdentityResult(events.conform(out, RESOLVED_COLUMNS), per_hour)
