"""Planning one hour's update of the identity graph: pure computation, no database.

The hour's identifiers become integer nodes; identifiers seen in one event are linked;
each stored identifier is also linked to its current person. Connected components
(vectorised hook-and-compress over numpy arrays) are the people after this hour. A
component that would give a person more identifiers of one kind than the cap is split
by a deterministic union that refuses the links over the cap. Identifiers seen in the
hour with more identifiers of one kind than a person may have (a shared computer's
cookie seen with nine emails) become unlinkable: they link nobody, now or later.

The result is a `GraphPlan`: what to insert, update, merge and flag, and each node's
person after the hour. `transform/identity.py` applies it in one transaction.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from conversion_platform.transform.identity_rules import (
    KIND_COLUMNS,
    KINDS,
    VARIANT_COLUMNS,
    IdentityRules,
)

COUNT_COLUMNS: tuple[str, ...] = tuple(f"{kind}_count" for kind in KINDS)
#: Person columns holding its contact digests: kind -> (digest column, variant column).
CONTACTS: dict[str, tuple[str, str | None]] = {
    "email": ("email_sha256", "email_google_sha256"),
    "phone": ("phone_sha256", "phone_digits_sha256"),
    "external_id": ("external_id_sha256", None),
}
CONTACT_COLUMNS: tuple[str, ...] = (
    "email_sha256",
    "email_google_sha256",
    "phone_sha256",
    "phone_digits_sha256",
    "external_id_sha256",
)
_NO_TIME = np.iinfo(np.int64).max


@dataclass
class HourNodes:
    """The hour's distinct identifiers (nodes) and which node each row holds per kind."""

    kind: np.ndarray  # index into KINDS per node
    value: np.ndarray  # object
    variant: np.ndarray  # object, None where unknown
    first_seen_us: np.ndarray  # int64: earliest event time in the hour
    row_nodes: np.ndarray  # (rows, len(KINDS)) int64, -1 where the row has none

    @property
    def size(self) -> int:
        return len(self.kind)


@dataclass
class GraphPlan:
    """What one hour changes in the graph, and each node's person afterwards."""

    node_person: np.ndarray  # object: person per node after the hour (None: not stored)
    node_stored: np.ndarray  # bool: the node is (or will be) a stored identifier
    node_linkable: np.ndarray  # bool
    anchor: np.ndarray  # per row: the node its person is taken from, -1 for none
    new_identifiers: pd.DataFrame
    unlinkable: pd.DataFrame  # stored identifiers (kind, value) newly unlinkable
    new_persons: pd.DataFrame
    updated_persons: pd.DataFrame
    merges: pd.DataFrame  # merged_person_id, into_person_id
    figures: dict[str, int] = field(default_factory=dict)


def collect_nodes(frame: pd.DataFrame, times_us: np.ndarray) -> HourNodes:
    """The distinct identifiers of `frame` (rows allowed to link, junk already removed)."""
    n = len(frame)
    row_nodes = np.full((n, len(KINDS)), -1, dtype=np.int64)
    kinds, values, variants, firsts = [], [], [], []
    offset = 0
    for k, kind in enumerate(KINDS):
        column = frame[KIND_COLUMNS[kind]]
        codes, uniques = pd.factorize(column)
        m = len(uniques)
        present = codes >= 0
        row_nodes[present, k] = codes[present] + offset
        first = np.full(m, _NO_TIME, dtype=np.int64)
        np.minimum.at(first, codes[present], times_us[present])
        variant = np.full(m, None, dtype=object)
        if kind in VARIANT_COLUMNS and m:
            given = frame[VARIANT_COLUMNS[kind]].astype(object).to_numpy()[present]
            known = pd.Series(given).notna().to_numpy()
            if known.any():
                firsts_known = pd.Series(given[known]).groupby(codes[present][known]).first()
                variant[firsts_known.index.to_numpy()] = firsts_known.to_numpy()
        kinds.append(np.full(m, k, dtype=np.int8))
        values.append(np.asarray(uniques, dtype=object))
        variants.append(variant)
        firsts.append(first)
        offset += m
    return HourNodes(
        kind=np.concatenate(kinds) if kinds else np.zeros(0, dtype=np.int8),
        value=np.concatenate(values) if values else np.zeros(0, dtype=object),
        variant=np.concatenate(variants) if variants else np.zeros(0, dtype=object),
        first_seen_us=np.concatenate(firsts) if firsts else np.zeros(0, dtype=np.int64),
        row_nodes=row_nodes,
    )


def find_overlinked(nodes: HourNodes, rules: IdentityRules) -> np.ndarray:
    """Nodes seen in this hour with more distinct identifiers of one kind than the cap."""
    n = nodes.size
    over = np.zeros(n, dtype=bool)
    rows = nodes.row_nodes
    for a in range(len(KINDS)):
        for b in range(len(KINDS)):
            if a == b:
                continue
            both = (rows[:, a] >= 0) & (rows[:, b] >= 0)
            if not both.any():
                continue
            pairs = pd.unique(rows[both, a] * n + rows[both, b])  # hashing, not sorting
            counts = np.bincount(pairs // n, minlength=n)
            over |= counts > rules.cap(KINDS[b])
    return over


def connected_components(size: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """A label per node (the smallest node of its component) from edges a-b."""
    labels = np.arange(size, dtype=np.int64)
    if len(a) == 0:
        return labels
    while True:
        la, lb = labels[a], labels[b]
        differ = la != lb
        if not differ.any():
            return labels
        low, high = np.minimum(la[differ], lb[differ]), np.maximum(la[differ], lb[differ])
        # hook each root to the smallest root it touches; labels only ever decrease
        np.minimum.at(labels, high, low)
        while True:
            jumped = labels[labels]
            if np.array_equal(jumped, labels):
                break
            labels = jumped


def new_person_id(kind: str, value: str, hour_us: int) -> str:
    """A stable id for a person first formed around this identifier in this hour.

    The hour comes first so that an hour's new persons are neighbours in every index.
    """
    return new_person_ids([kind], [value], hour_us)[0]


def new_person_ids(kinds: Sequence[str], values: Sequence[str], hour_us: int) -> list[str]:
    """`new_person_id` of each (kind, value): one SHA-256 per person, nothing else per row."""
    prefix = f"p_{hour_us // 3_600_000_000:07x}"
    sha256 = hashlib.sha256
    return [
        prefix + sha256(f"{kind}\x1f{value}".encode()).hexdigest()[:16]
        for kind, value in zip(kinds, values, strict=True)
    ]


class _CappedUnion:
    """Union-find whose unions are refused when a kind's count would pass its cap."""

    def __init__(self, counts: dict[int, np.ndarray], caps: np.ndarray) -> None:
        self.parent: dict[int, int] = {node: node for node in counts}
        self.counts = counts
        self.caps = caps

    def find(self, node: int) -> int:
        root = node
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[node] != root:
            self.parent[node], node = root, self.parent[node]
        return root

    def union(self, a: int, b: int, capped: bool = True) -> bool:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return True
        combined = self.counts[ra] + self.counts[rb]
        if capped and (combined > self.caps).any():
            return False
        low, high = min(ra, rb), max(ra, rb)
        self.parent[high] = low
        self.counts[low] = combined
        return True


def _row_anchors(rows: np.ndarray, linkable: np.ndarray) -> np.ndarray:
    """Per row, its first linkable node in KINDS order (the most personal), or -1."""
    anchor = np.full(len(rows), -1, dtype=np.int64)
    for k in reversed(range(rows.shape[1])):
        column = rows[:, k]
        ok = column >= 0
        ok[ok] = linkable[column[ok]]
        anchor = np.where(ok, column, anchor)
    return anchor


def _row_edges(
    rows: np.ndarray, anchor: np.ndarray, linkable: np.ndarray, times_us: np.ndarray, size: int
) -> pd.DataFrame:
    """Distinct links (a, b) between nodes seen in one row, with the earliest time seen."""
    parts = []
    for k in range(rows.shape[1]):
        column = rows[:, k]
        ok = (column >= 0) & (anchor >= 0) & (column != anchor)
        ok[ok] = linkable[column[ok]]
        if ok.any():
            low = np.minimum(anchor[ok], column[ok])
            high = np.maximum(anchor[ok], column[ok])
            parts.append(pd.DataFrame({"key": low * size + high, "t": times_us[ok]}))
    if not parts:
        return pd.DataFrame({"a": [], "b": [], "t": []}, dtype=np.int64)
    edges = pd.concat(parts, ignore_index=True).groupby("key", sort=True)["t"].min()
    keys = edges.index.to_numpy(dtype=np.int64)
    return pd.DataFrame({"a": keys // size, "b": keys % size, "t": edges.to_numpy()})


def plan_hour(
    nodes: HourNodes,
    stored: np.ndarray,
    stored_person: np.ndarray,
    stored_linkable: np.ndarray,
    row_has_click: np.ndarray,
    times_us: np.ndarray,
    person_stats: Callable[[list[str]], pd.DataFrame],
    rules: IdentityRules,
    hour_us: int,
) -> GraphPlan:
    """Plan the hour's update of the graph.

    Per node: `stored` (already in the graph), `stored_person` (its person, None when new
    or unlinkable without one), `stored_linkable` (True for new nodes). Per row:
    `row_has_click` and `times_us` (event time). `person_stats(ids)` returns stored
    persons' `first_seen_us` and count columns.
    """
    n = nodes.size
    caps = np.array([rules.cap(kind) for kind in KINDS], dtype=np.int64)
    overlinked = find_overlinked(nodes, rules)
    linkable = stored_linkable & ~overlinked
    newly_unlinkable = overlinked & stored & stored_linkable
    anchor = _row_anchors(nodes.row_nodes, linkable)
    edges = _row_edges(nodes.row_nodes, anchor, linkable, times_us, max(n, 1))

    # Stored persons become nodes too, so the hour's links join whole persons.
    attached = stored & linkable & pd.notna(stored_person)
    person_codes, person_ids = pd.factorize(stored_person[attached])
    person_nodes = n + person_codes.astype(np.int64)
    size = n + len(person_ids)
    all_a = np.concatenate([edges["a"].to_numpy(np.int64), np.flatnonzero(attached)])
    all_b = np.concatenate([edges["b"].to_numpy(np.int64), person_nodes])
    labels = connected_components(size, all_a, all_b)

    new_linkable = linkable & ~stored
    clicked = np.zeros(n, dtype=bool)
    if len(anchor):
        with_click = (anchor >= 0) & row_has_click
        clicked[anchor[with_click]] = True
    node_label = labels[:n]
    persons_in = np.bincount(labels[n:], minlength=size)
    identifier_nodes_in = np.bincount(node_label[linkable], minlength=size)
    new_in = np.bincount(node_label[new_linkable], minlength=size)
    clicked_new_in = np.bincount(node_label[new_linkable & clicked], minlength=size)
    changing = (persons_in >= 2) | ((persons_in == 1) & (new_in >= 1))
    changing |= (persons_in == 0) & ((identifier_nodes_in >= 2) | (clicked_new_in >= 1))

    # Stored persons' sizes, for the components that change.
    person_label = labels[n:]
    wanted = [str(p) for p in person_ids[changing[person_label]]] if len(person_ids) else []
    stats = person_stats(wanted) if wanted else pd.DataFrame(columns=["person_id"])
    # One row per stored person node, in node order: what the graph holds about it.
    person_table = (
        stats.set_index("person_id")
        .reindex(pd.Index(person_ids, dtype=object))
        .reindex(columns=["first_seen_us", *COUNT_COLUMNS, *CONTACT_COLUMNS])
    )
    person_table["first_seen_us"] = person_table["first_seen_us"].fillna(_NO_TIME)
    person_table[list(COUNT_COLUMNS)] = person_table[list(COUNT_COLUMNS)].fillna(0)
    person_table = person_table.astype(
        {"first_seen_us": np.int64, **dict.fromkeys(COUNT_COLUMNS, np.int64)}
    ).reset_index(names="person_id")
    person_counts = person_table[list(COUNT_COLUMNS)].to_numpy(np.int64)

    component_counts = np.zeros((size, len(KINDS)), dtype=np.int64)
    for k in range(len(KINDS)):
        mine = new_linkable & (nodes.kind == k)
        component_counts[:, k] = np.bincount(node_label[mine], minlength=size)
        component_counts[:, k] += np.bincount(
            person_label, weights=person_counts[:, k], minlength=size
        ).astype(np.int64)
    over_cap = changing & (component_counts > caps).any(axis=1)

    # Groups: a component, or for one over the cap, the pieces a capped union leaves.
    group = labels.copy()
    refused = 0
    if over_cap.any():
        group, refused = _split_over_cap(
            over_cap,
            labels,
            n,
            nodes,
            edges,
            attached,
            person_nodes,
            person_counts,
            new_linkable,
            caps,
        )
    return _assign(
        nodes,
        group,
        n,
        size,
        person_table,
        stored,
        stored_person,
        linkable,
        new_linkable,
        newly_unlinkable,
        overlinked,
        clicked,
        anchor,
        refused,
        hour_us,
    )


def _split_over_cap(
    over_cap: np.ndarray,
    labels: np.ndarray,
    n: int,
    nodes: HourNodes,
    edges: pd.DataFrame,
    attached: np.ndarray,
    person_nodes: np.ndarray,
    person_counts: np.ndarray,
    new_linkable: np.ndarray,
    caps: np.ndarray,
) -> tuple[np.ndarray, int]:
    """Re-group the nodes of over-cap components with a capped union; count refused links."""
    group = labels.copy()
    in_over = over_cap[labels]
    counts: dict[int, np.ndarray] = {}
    for node in np.flatnonzero(in_over):
        if node >= n:
            counts[int(node)] = person_counts[node - n].copy()
        else:
            one = np.zeros(len(KINDS), dtype=np.int64)
            if new_linkable[node]:
                one[nodes.kind[node]] = 1
            counts[int(node)] = one
    union = _CappedUnion(counts, caps)
    # A stored identifier is already counted in its person: joining them is never refused.
    for node, person_node in zip(np.flatnonzero(attached), person_nodes, strict=True):
        if in_over[node]:
            union.union(int(node), int(person_node), capped=False)
    # Then the hour's links in the order they were first seen: earlier links win.
    mine = edges.loc[in_over[edges["a"].to_numpy(np.int64)]].sort_values(["t", "a", "b"])
    refused = 0
    for a, b in zip(mine["a"].to_numpy(np.int64), mine["b"].to_numpy(np.int64), strict=True):
        if not union.union(int(a), int(b)):
            refused += 1
    for node in counts:
        group[node] = union.find(node)
    return group, refused


def _assign(
    nodes: HourNodes,
    group: np.ndarray,
    n: int,
    size: int,
    person_table: pd.DataFrame,
    stored: np.ndarray,
    stored_person: np.ndarray,
    linkable: np.ndarray,
    new_linkable: np.ndarray,
    newly_unlinkable: np.ndarray,
    overlinked: np.ndarray,
    clicked: np.ndarray,
    anchor: np.ndarray,
    refused: int,
    hour_us: int,
) -> GraphPlan:
    """Turn groups into persons: keep the oldest person, merge the others, create new ones."""
    node_group = group[:n]
    # Persons per group: the one first seen earliest is kept, the others merge into it.
    # Ties on the first-seen time fall to the order persons were met (integer keys sort fast).
    persons = person_table.assign(group=group[n:size], code=np.arange(len(person_table)))
    persons = persons.sort_values(["group", "first_seen_us", "code"], kind="stable")
    kept = persons.drop_duplicates("group", keep="first").set_index("group")["person_id"]
    merged = persons.loc[persons["person_id"].to_numpy() != persons["group"].map(kept).to_numpy()]
    merges = pd.DataFrame(
        {
            "merged_person_id": merged["person_id"].astype(object).to_numpy(),
            "into_person_id": merged["group"].map(kept).astype(object).to_numpy(),
        }
    )
    merged_into = dict(zip(merges["merged_person_id"], merges["into_person_id"], strict=True))

    # Per group: new identifiers by kind, their earliest time, and whether it is stored.
    ids = pd.DataFrame(
        {
            "node": np.arange(n),
            "group": node_group,
            "kind": nodes.kind,
            "value": nodes.value,
            "first_seen_us": nodes.first_seen_us,
            "variant": nodes.variant,
            "new": new_linkable,
            "linkable": linkable,
            "clicked_new": new_linkable & clicked,
        }
    )
    linkable_ids = ids.loc[ids["linkable"]]
    per_group = linkable_ids.groupby("group").agg(
        identifiers=("linkable", "size"), clicked_new=("clicked_new", "any")
    )
    new_ids = ids.loc[ids["new"]]
    new_counts = (
        new_ids.groupby(["group", "kind"]).size().unstack(fill_value=0)
        if len(new_ids)
        else pd.DataFrame(index=pd.Index([], name="group"))
    )
    new_counts = new_counts.reindex(columns=range(len(KINDS)), fill_value=0)
    new_first = new_ids.groupby("group")["first_seen_us"].min()
    has_person = per_group.index.isin(kept.index)
    stored_group = has_person | (per_group["identifiers"] >= 2) | per_group["clicked_new"]
    stored_groups = per_group.index[stored_group.to_numpy()]

    # New persons: named after their smallest identifier (kind order, then value).
    fresh = stored_groups.difference(kept.index)
    seeds = (
        new_ids.loc[new_ids["group"].isin(fresh)]
        .sort_values(["group", "kind", "node"], kind="stable")
        .drop_duplicates("group")
        .set_index("group")
    )
    fresh_ids = pd.Series(
        new_person_ids(
            np.asarray(KINDS, dtype=object)[seeds["kind"].to_numpy(np.int64)].tolist(),
            seeds["value"].tolist(),
            hour_us,
        ),
        index=seeds.index,
        dtype=object,
    )
    group_person = pd.concat([kept.astype(object), fresh_ids])

    new_persons = pd.DataFrame(
        {
            "person_id": fresh_ids.to_numpy(),
            "first_seen_us": new_first.reindex(fresh_ids.index).to_numpy(np.int64),
            "created_hour_us": hour_us,
            "updated_hour_us": hour_us,
        }
    )
    for k, column in enumerate(COUNT_COLUMNS):
        new_persons[column] = new_counts.reindex(fresh_ids.index, fill_value=0)[k].to_numpy(
            np.int64
        )

    # Kept persons that gained identifiers or absorbed others get new counts.
    totals = persons.groupby("group")[list(COUNT_COLUMNS)].sum()
    firsts = persons.groupby("group")["first_seen_us"].min()
    merging_groups = persons.groupby("group").size()
    touched = kept.index[
        (merging_groups.reindex(kept.index, fill_value=0) >= 2).to_numpy()
        | kept.index.isin(new_ids["group"].unique())
    ]
    updated = pd.DataFrame({"person_id": kept.reindex(touched).to_numpy(dtype=object)})
    for k, column in enumerate(COUNT_COLUMNS):
        updated[column] = totals.reindex(touched)[column].to_numpy(np.int64) + new_counts.reindex(
            touched, fill_value=0
        )[k].to_numpy(np.int64)
    updated["first_seen_us"] = np.minimum(
        firsts.reindex(touched).to_numpy(np.int64),
        new_first.reindex(touched, fill_value=_NO_TIME).to_numpy(np.int64),
    )
    updated["updated_hour_us"] = hour_us
    contacts = _group_contacts(persons, new_ids, fresh_ids.index.union(touched))
    for column in CONTACT_COLUMNS:
        new_persons[column] = contacts[column].reindex(fresh_ids.index).to_numpy(dtype=object)
        updated[column] = contacts[column].reindex(touched).to_numpy(dtype=object)

    # Each node's person after the hour.
    node_person = np.full(n, None, dtype=object)
    in_stored_group = linkable & np.isin(node_group, stored_groups.to_numpy())
    node_person[in_stored_group] = group_person.reindex(node_group[in_stored_group]).to_numpy()
    unlinkable_stored = stored & ~linkable
    if unlinkable_stored.any():
        node_person[unlinkable_stored] = [
            merged_into.get(p, p) if p is not None else None
            for p in stored_person[unlinkable_stored]
        ]
    node_stored = stored | in_stored_group | overlinked

    inserting = ~stored & (in_stored_group | overlinked)
    new_identifiers = pd.DataFrame(
        {
            "kind": [KINDS[k] for k in nodes.kind[inserting]],
            "value": nodes.value[inserting],
            "variant": nodes.variant[inserting],
            "person_id": node_person[inserting],
            "linkable": linkable[inserting],
            "first_seen_us": nodes.first_seen_us[inserting],
            "first_hour_us": hour_us,
        }
    )
    unlinkable = pd.DataFrame(
        {
            "kind": [KINDS[k] for k in nodes.kind[newly_unlinkable]],
            "value": nodes.value[newly_unlinkable],
        }
    )
    figures = {
        "identifiers_new": int((inserting & linkable).sum()),
        "identifiers_made_unlinkable": int(overlinked[~stored].sum() + newly_unlinkable.sum()),
        "persons_new": len(new_persons),
        "persons_merged": len(merges),
        "links_refused_by_cap": int(refused),
    }
    return GraphPlan(
        node_person=node_person,
        node_stored=node_stored,
        node_linkable=linkable,
        anchor=anchor,
        new_identifiers=new_identifiers,
        unlinkable=unlinkable,
        new_persons=new_persons,
        updated_persons=updated,
        merges=merges,
        figures=figures,
    )


def _group_contacts(persons: pd.DataFrame, new_ids: pd.DataFrame, groups: pd.Index) -> pd.DataFrame:
    """Per group, the contact digests its person carries: the kept person's own, else those
    of the persons it absorbs (oldest first), else the hour's new identifiers (earliest
    seen first)."""
    parts = []
    mine = persons.loc[persons["group"].isin(groups)]
    order = mine.groupby("group").cumcount().to_numpy()
    fresh = new_ids.loc[new_ids["group"].isin(groups)]
    for kind, (column, variant_column) in CONTACTS.items():
        parts.append(
            pd.DataFrame(
                {
                    "group": mine["group"].to_numpy(),
                    "kind": KINDS.index(kind),
                    "source": 0,
                    "order": order,
                    "value": mine[column].to_numpy(dtype=object),
                    "variant": mine[variant_column].to_numpy(dtype=object)
                    if variant_column
                    else None,
                }
            )
        )
        of_kind = fresh.loc[fresh["kind"] == KINDS.index(kind)]
        parts.append(
            pd.DataFrame(
                {
                    "group": of_kind["group"].to_numpy(),
                    "kind": KINDS.index(kind),
                    "source": 1,
                    "order": of_kind["first_seen_us"].to_numpy(),
                    "node": of_kind["node"].to_numpy(),
                    "value": of_kind["value"].to_numpy(dtype=object),
                    "variant": of_kind["variant"].to_numpy(dtype=object),
                }
            )
        )
    candidates = pd.concat(parts, ignore_index=True)
    candidates = candidates.loc[candidates["value"].notna()]
    candidates["node"] = candidates["node"].fillna(-1)
    chosen = candidates.sort_values(
        ["group", "kind", "source", "order", "node"], kind="stable"
    ).drop_duplicates(["group", "kind"])
    out = pd.DataFrame(index=groups, columns=list(CONTACT_COLUMNS), dtype=object)
    for kind, (column, variant_column) in CONTACTS.items():
        picked = chosen.loc[chosen["kind"] == KINDS.index(kind)].set_index("group")
        out[column] = picked["value"].reindex(groups)
        if variant_column:
            variant = picked["variant"].where(picked["variant"].notna(), picked["value"])
            out[variant_column] = variant.reindex(groups)
    return out
