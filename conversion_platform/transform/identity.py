"""Identity resolution of one window: a person per conversion and its match quality.

This first version links identifiers seen together *within the rows given*: connected
identifiers (mpid, hashed email, hashed phone, hashed external id) form one person, and
each conversion is enriched with the identifiers its person was seen with. The person id
is derived from the person's smallest identifier, so it is stable across re-runs.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd

from conversion_platform import events
from conversion_platform.transform.match_quality import match_quality_scores, strong_key_counts

LINK_COLUMNS: tuple[str, ...] = ("mpid", "email_sha256", "phone_sha256", "external_id_sha256")
ENRICHED_COLUMNS: tuple[str, ...] = (
    "email_sha256",
    "email_google_sha256",
    "phone_sha256",
    "phone_digits_sha256",
    "external_id_sha256",
)
RESOLVED_COLUMNS: tuple[str, ...] = (
    *events.CANONICAL_COLUMNS,
    *events.STAGE_COLUMNS["dedupe"],
    *events.STAGE_COLUMNS["identity"],
)


def _find(parent: dict[str, str], node: str) -> str:
    root = node
    while parent[root] != root:
        root = parent[root]
    while parent[node] != root:
        parent[node], node = root, parent[node]
    return root


def connect_identifiers(frame: pd.DataFrame, linkable: pd.Series) -> pd.Series:
    """A component label per row: rows sharing any identifier are one person."""
    parent: dict[str, str] = {}
    row_nodes: list[list[str]] = []
    values = {
        c: frame[c].astype(object).where(frame[c].notna(), None).tolist() for c in LINK_COLUMNS
    }
    link = linkable.to_numpy()
    for i in range(len(frame)):
        nodes = [f"{c}:{values[c][i]}" for c in LINK_COLUMNS if values[c][i] is not None]
        if not link[i]:
            nodes = nodes[:1]  # without consent an event is not used to link identities
        for node in nodes:
            parent.setdefault(node, node)
        for node in nodes[1:]:
            a, b = _find(parent, nodes[0]), _find(parent, node)
            if a != b:
                parent[max(a, b)] = min(a, b)
        row_nodes.append(nodes)
    labels = [(_find(parent, nodes[0]) if nodes else None) for nodes in row_nodes]
    return pd.Series(labels, index=frame.index, dtype="object")


def resolve_identities(frame: pd.DataFrame) -> pd.DataFrame:
    """Add `person_id`, fill identifiers from the person's other events, and score each row."""
    frame = frame.reset_index(drop=True).copy()
    if frame.empty:
        return events.conform(frame, RESOLVED_COLUMNS)
    consent = frame["consent_ad_user_data"].astype("string").fillna(events.CONSENT_UNKNOWN)
    linkable = consent != events.CONSENT_DENIED
    frame["strong_keys_before"] = strong_key_counts(frame)
    component = connect_identifiers(frame, linkable)
    has_person = component.notna()
    person = component.map(
        lambda c: "p_" + hashlib.sha256(c.encode()).hexdigest()[:24] if c else None
    )
    frame["person_id"] = person.astype("string")
    enrich = has_person & linkable
    if enrich.any():
        sub = frame.loc[enrich, ["person_id", *ENRICHED_COLUMNS]]
        known = sub.groupby("person_id", sort=False)[list(ENRICHED_COLUMNS)].first()
        for column in ENRICHED_COLUMNS:
            fill = frame.loc[enrich, "person_id"].map(known[column])
            current = frame.loc[enrich, column]
            frame.loc[enrich, column] = current.where(current.notna(), fill)
    frame["strong_keys_after"] = strong_key_counts(frame)
    frame["match_quality"] = np.round(match_quality_scores(frame), 2)
    return events.conform(frame, RESOLVED_COLUMNS)
