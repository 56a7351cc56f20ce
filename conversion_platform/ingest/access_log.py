"""nginx/Apache combined access-log lines, turned into conversions by URL rules.

A rule names a method, a path (exact, or a regular expression), the HTTP statuses that
count, the event name, and which query parameters fill which model fields. Click ids in
the query string (`gclid`, `fbclid`, ...) are always taken. Lines that match no rule are
ordinary page hits: not conversions, not errors.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import yaml

from conversion_platform import events

#: `$remote_addr - $remote_user [$time_local] "$request" $status $bytes "$referer" "$ua"`
COMBINED_LOG = re.compile(
    r"^(?P<ip>\S+) \S+ (?P<user>\S+) \[(?P<time>[^\]]+)\] "
    r'"(?P<method>[A-Z]+) (?P<target>\S+)(?: HTTP/[\d.]+)?" '
    r"(?P<status>\d{3}) (?P<bytes>\d+|-)"
    r'(?: "(?P<referrer>(?:[^"\\]|\\.)*)" "(?P<user_agent>(?:[^"\\]|\\.)*)")?'
)
_TIME_FORMAT = "%d/%b/%Y:%H:%M:%S %z"


class AccessLogError(ValueError):
    """A line that isn't in the combined log format."""


@dataclass(frozen=True)
class AccessLogRule:
    """One URL rule: which requests are which conversion."""

    event_name: str
    path: str
    method: str = "GET"
    path_is_regex: bool = False
    statuses: tuple[int, ...] = tuple(range(200, 400))
    #: query parameter -> model field (for example `order_id: order_id`, `amount: value`)
    fields: dict[str, str] = field(default_factory=dict)
    #: fixed values for the event (for example `currency: EUR`)
    defaults: dict[str, Any] = field(default_factory=dict)
    #: the site's origin, so `page_url` is absolute (`https://shop.example`)
    base_url: str | None = None

    def matches(self, method: str, path: str, status: int) -> bool:
        if method != self.method or status not in self.statuses:
            return False
        if self.path_is_regex:
            return re.fullmatch(self.path, path) is not None
        return path.rstrip("/") == self.path.rstrip("/")


def load_access_log_rules(path: Path) -> list[AccessLogRule]:
    """Rules from a YAML file with a top-level `rules:` list."""
    if not path.exists():
        return []
    document = yaml.safe_load(path.read_text()) or {}
    rules: list[AccessLogRule] = []
    base_url = document.get("base_url")
    for entry in document.get("rules", []):
        statuses = entry.get("statuses")
        rules.append(
            AccessLogRule(
                event_name=str(entry["event_name"]),
                path=str(entry["path"]),
                method=str(entry.get("method", "GET")).upper(),
                path_is_regex=bool(entry.get("path_is_regex", False)),
                statuses=tuple(int(s) for s in statuses) if statuses else tuple(range(200, 400)),
                fields={str(k): str(v) for k, v in (entry.get("fields") or {}).items()},
                defaults=dict(entry.get("defaults") or {}),
                base_url=str(entry.get("base_url", base_url) or "").rstrip("/") or None,
            )
        )
    return rules


def parse_access_log_time(line: str) -> datetime | None:
    """The stamp of a combined-log line, or None when the line isn't one."""
    start = line.find("[")
    end = line.find("]", start + 1)
    if start < 0 or end < 0:
        return None
    try:
        return datetime.strptime(line[start + 1 : end], _TIME_FORMAT)
    except ValueError:
        return None


def parse_access_log_line(
    line: str, rules: list[AccessLogRule]
) -> tuple[datetime, dict[str, Any] | None]:
    """(log time, incoming record or None when no rule matches) for one line.

    Raises `AccessLogError` when the line isn't in the combined format.
    """
    match = COMBINED_LOG.match(line)
    if match is None:
        raise AccessLogError("not a combined access-log line")
    try:
        logged_at = datetime.strptime(match["time"], _TIME_FORMAT)
    except ValueError as exc:
        raise AccessLogError(f"bad access-log time {match['time'][:40]!r}") from exc
    target = urlsplit(match["target"])
    status = int(match["status"])
    rule = next((r for r in rules if r.matches(match["method"], target.path, status)), None)
    if rule is None:
        return logged_at, None
    query = dict(parse_qsl(target.query, keep_blank_values=False))
    record: dict[str, Any] = dict(rule.defaults)
    for parameter, model_field in rule.fields.items():
        if parameter in query:
            record[model_field] = query[parameter]
    for parameter, column in events.CLICK_ID_PARAMETERS.items():
        if parameter in query:
            record[column] = query[parameter]
    referrer = match["referrer"]
    user_agent = match["user_agent"]
    record.update(
        {
            "event_name": rule.event_name,
            "event_time": logged_at.isoformat(),
            "client_ip": match["ip"],
            "user_agent": user_agent if user_agent not in (None, "", "-") else None,
            "referrer": referrer if referrer not in (None, "", "-") else None,
            "page_url": (rule.base_url or "") + match["target"],
            "action_source": "website",
        }
    )
    return logged_at, record
