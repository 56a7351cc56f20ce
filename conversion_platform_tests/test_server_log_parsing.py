"""Server-log ingest: JSON lines and combined access logs, plain and gzip, broken lines,
hour boundaries, the file time index, and the quarantine of unreadable lines."""

from __future__ import annotations

import gzip
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from conversion_platform import events
from conversion_platform.ingest.access_log import (
    AccessLogError,
    AccessLogRule,
    load_access_log_rules,
    parse_access_log_line,
)
from conversion_platform.ingest.json_lines import JsonLineError, parse_json_line
from conversion_platform.ingest.log_conversions import ingest_server_logs
from conversion_platform.ingest.records import GENERATED_EVENT_ID_PREFIX
from conversion_platform.ingest.server_logs import read_logs_for_hours
from conversion_platform.settings import SEEDS_DIR
from conversion_platform.store.tables import log_file_index
from conversion_platform.transform.normalise import hash_email, hash_name, hash_phone, sha256_hex

H10 = datetime(2026, 3, 2, 10, tzinfo=UTC)
H11 = H10 + timedelta(hours=1)
RULES = load_access_log_rules(SEEDS_DIR / "access_log_rules.yaml")


def _write(path: Path, lines: list[bytes], compress: bool = False) -> Path:
    data = b"\n".join(lines) + b"\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


def test_json_line_takes_logged_at_over_event_time() -> None:
    logged_at, record = parse_json_line(
        '{"event_name": "lead", "event_time": "2026-03-02T09:59:00+00:00", "logged_at": "2026-03-02T10:00:01Z"}'
    )
    assert logged_at == datetime(2026, 3, 2, 10, 0, 1, tzinfo=UTC)
    assert record["event_name"] == "lead"


def test_json_line_falls_back_to_event_time_and_converts_offsets_to_utc() -> None:
    logged_at, _ = parse_json_line(
        '{"event_name": "lead", "event_time": "2026-03-02T12:30:00+02:00"}'
    )
    assert logged_at == datetime(2026, 3, 2, 10, 30, tzinfo=UTC)


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ('{"event_name": "lead", "event_time": "2026-03-02T10:00', "invalid JSON"),
        ('["an", "array"]', "must hold an object"),
        ('{"event_name": "lead"}', "event_time is missing"),
        ('{"event_name": "lead", "event_time": "2026-03-02T10:00:00"}', "no UTC offset"),
        ('{"event_name": "lead", "event_time": "yesterday"}', "not ISO 8601"),
    ],
)
def test_broken_json_lines_raise_with_reason(line: str, reason: str) -> None:
    with pytest.raises(JsonLineError, match=reason):
        parse_json_line(line)


def test_access_log_purchase_rule_takes_query_fields_click_ids_ip_and_agent() -> None:
    line = (
        '203.0.113.10 - - [02/Mar/2026:10:20:45 +0000] "GET /checkout/thank-you?order_id=o-1&value=49.00'
        '&currency=EUR&gclid=Cj0abc&fbclid=IwAR1 HTTP/2.0" 200 5120 "https://shop.example/cart" "Mozilla/5.0 X"'
    )
    logged_at, record = parse_access_log_line(line, RULES)
    assert logged_at == datetime(2026, 3, 2, 10, 20, 45, tzinfo=UTC)
    assert record is not None
    assert record["event_name"] == events.PURCHASE
    assert (record["order_id"], record["value"], record["currency"]) == ("o-1", "49.00", "EUR")
    assert (record["gclid"], record["fbclid"]) == ("Cj0abc", "IwAR1")
    assert record["client_ip"] == "203.0.113.10"
    assert record["user_agent"] == "Mozilla/5.0 X"
    assert record["referrer"] == "https://shop.example/cart"
    assert record["page_url"].startswith("https://shop.example/checkout/thank-you?order_id=o-1")


def test_access_log_lines_matching_no_rule_or_wrong_status_are_not_conversions() -> None:
    page = '1.2.3.4 - - [02/Mar/2026:10:01:12 +0000] "GET /products/17 HTTP/1.1" 200 10 "-" "ua"'
    missing = '1.2.3.4 - - [02/Mar/2026:10:01:12 +0000] "GET /checkout/thank-you?order_id=x HTTP/1.1" 404 10 "-" "ua"'
    assert parse_access_log_line(page, RULES)[1] is None
    assert parse_access_log_line(missing, RULES)[1] is None


def test_access_log_rule_by_regex_and_method() -> None:
    rule = AccessLogRule(
        event_name="lead", path=r"/forms/\d+/done", path_is_regex=True, method="POST"
    )
    line = '1.2.3.4 - - [02/Mar/2026:10:01:12 +0000] "POST /forms/42/done HTTP/1.1" 302 0 "-" "ua"'
    assert parse_access_log_line(line, [rule])[1]["event_name"] == "lead"  # type: ignore[index]


def test_garbage_is_not_an_access_log_line() -> None:
    with pytest.raises(AccessLogError):
        parse_access_log_line("\x16\x03\x01 garbage", RULES)


def test_gzip_and_plain_files_mixed_formats_and_broken_lines(engine, tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    _write(
        logs / "app.log.gz",
        [
            b'{"event_id": "a", "event_name": "lead", "event_time": "2026-03-02T10:00:00+00:00", "email": "A@Example.com"}',
            b'{"event_id": "b", "event_name": "purchase", "event_time": "2026-03-02T10:05:00+00:00", "em',
            b'203.0.113.10 - - [02/Mar/2026:10:20:45 +0000] "GET /checkout/thank-you?order_id=o-9&value=5&currency=USD HTTP/1.1" 200 1 "-" "ua"',
            b'{"event_id": "c", "event_name": "lead", "first_name": "Ren\xe9e", "event_time": "2026-03-02T10:30:00+00:00"}',
        ],
        compress=True,
    )
    # A .gz name holding plain text: the magic bytes decide, not the name.
    _write(
        logs / "plain.gz",
        [b'{"event_id": "d", "event_name": "sign_up", "event_time": "2026-03-02T10:40:00+00:00"}'],
    )
    result = ingest_server_logs(engine, logs, RULES, [H10])
    ids = set(result.frame["event_id"])
    assert {"a", "d"} <= ids
    assert len(result.frame) == 3  # a, the access-log purchase, d
    reasons = sorted(q.reason for q in result.quarantined)
    assert reasons == ["invalid JSON: unexpected end of data", "not valid UTF-8"]
    origins = sorted(q.origin.rsplit("/", 1)[-1] for q in result.quarantined)
    assert origins == ["app.log.gz:2", "app.log.gz:4"]
    # The quarantine keeps a redacted form: the first name never appears in plaintext.
    assert all(
        "Ren" not in (q.raw_redacted or "") or "[redacted]" in (q.raw_redacted or "")
        for q in result.quarantined
    )
    # Personal data is hashed where it enters.
    row = result.frame.set_index("event_id").loc["a"]
    assert row["email_sha256"] == sha256_hex("a@example.com")
    assert "email" not in result.frame.columns


def test_truncated_gzip_keeps_readable_lines_and_quarantines_the_rest(
    engine, tmp_path: Path
) -> None:
    logs = tmp_path / "logs"
    lines = [
        f'{{"event_id": "e{i}", "event_name": "lead", "event_time": "2026-03-02T10:{i % 60:02d}:00+00:00"}}'.encode()
        for i in range(2_000)
    ]
    data = gzip.compress(b"\n".join(lines) + b"\n")
    logs.mkdir()
    (logs / "cut.jsonl.gz").write_bytes(data[: len(data) // 2])
    result = ingest_server_logs(engine, logs, RULES, [H10])
    assert 0 < len(result.frame) < 2_000
    assert len(result.quarantined) == 1
    assert result.quarantined[0].reason.startswith("unreadable compressed data after line")


def test_hour_boundaries_last_millisecond_and_next_hour(engine, tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    _write(
        logs / "edge.jsonl",
        [
            b'{"event_id": "last", "event_name": "lead", "event_time": "2026-03-02T10:59:59.999+00:00"}',
            b'{"event_id": "first", "event_name": "lead", "event_time": "2026-03-02T11:00:00.000+00:00"}',
            b'{"event_id": "before", "event_name": "lead", "event_time": "2026-03-02T09:59:59.999999+00:00"}',
        ],
    )
    ten = ingest_server_logs(engine, logs, RULES, [H10])
    eleven = ingest_server_logs(engine, logs, RULES, [H11])
    assert list(ten.frame["event_id"]) == ["last"]
    assert list(eleven.frame["event_id"]) == ["first"]
    assert (ten.frame[events.HOUR_COLUMN] == H10).all()
    both = ingest_server_logs(engine, logs, RULES, [H10, H11])
    assert sorted(both.frame["event_id"]) == ["first", "last"]


def test_broken_line_belongs_to_the_hour_of_the_readable_line_before_it(
    engine, tmp_path: Path
) -> None:
    logs = tmp_path / "logs"
    _write(
        logs / "x.jsonl",
        [
            b"not json at the very start",
            b'{"event_id": "a", "event_name": "lead", "event_time": "2026-03-02T10:59:00+00:00"}',
            b'{"broken": ',
            b'{"event_id": "b", "event_name": "lead", "event_time": "2026-03-02T11:01:00+00:00"}',
            b'{"broken again": ',
        ],
    )
    ten = ingest_server_logs(engine, logs, RULES, [H10])
    eleven = ingest_server_logs(engine, logs, RULES, [H11])
    assert sorted(q.origin.rsplit(":", 1)[1] for q in ten.quarantined) == ["1", "3"]
    assert [q.origin.rsplit(":", 1)[1] for q in eleven.quarantined] == ["5"]
    # However many hours run, each broken line is quarantined exactly once.
    window = ingest_server_logs(
        engine, logs, RULES, [H10 - timedelta(hours=1), H10, H11, H11 + timedelta(hours=1)]
    )
    assert len(window.quarantined) == 3


def test_event_without_id_gets_a_deterministic_id(engine, tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    line = b'{"event_name": "lead", "event_time": "2026-03-02T10:10:00+00:00", "email": "x@y.com"}'
    relogged = b'{"event_name": "lead", "event_time": "2026-03-02T10:10:00+00:00", "email": "x@y.com", "logged_at": "2026-03-02T10:20:00+00:00"}'
    _write(logs / "a.jsonl", [line, relogged])
    frame = ingest_server_logs(engine, logs, RULES, [H10]).frame
    first, second = frame["event_id"]
    assert first.startswith(GENERATED_EVENT_ID_PREFIX)
    assert first == second  # a re-logged copy carries the same id
    assert ingest_server_logs(engine, logs, RULES, [H10]).frame["event_id"].iloc[0] == first


def test_an_ingest_run_keeps_no_plaintext_memo_behind(engine, tmp_path: Path) -> None:
    """The hashers' memo holds plaintext; a run empties it when it is done, and the
    digests are the same as without it."""
    logs = tmp_path / "logs"
    line = (
        b'{"event_id": "m-1", "event_name": "lead", "event_time": "2026-03-02T10:10:00+00:00",'
        b' "email": "Memo@Example.com", "phone": "+1 415 555 0100", "first_name": "Ada"}'
    )
    _write(logs / "a.jsonl", [line])
    hash_email("warm@example.com")
    frame = ingest_server_logs(engine, logs, RULES, [H10]).frame
    for memoised in (hash_email, hash_phone, hash_name):
        assert memoised.cache_info().currsize == 0
    assert frame["email_sha256"].iloc[0] == sha256_hex("memo@example.com")
    assert frame["phone_sha256"].iloc[0] == sha256_hex("+14155550100")


def test_consent_absent_means_unknown(engine, tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    _write(
        logs / "a.jsonl",
        [b'{"event_id": "a", "event_name": "lead", "event_time": "2026-03-02T10:10:00+00:00"}'],
    )
    frame = ingest_server_logs(engine, logs, RULES, [H10]).frame
    assert frame["consent_ad_user_data"].iloc[0] == events.CONSENT_UNKNOWN


def test_file_index_limits_reads_and_refreshes_when_a_file_changes(engine, tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    march = _write(
        logs / "march.jsonl",
        [b'{"event_id": "m", "event_name": "lead", "event_time": "2026-03-02T10:10:00+00:00"}'],
    )
    _write(
        logs / "april.jsonl",
        [b'{"event_id": "p", "event_name": "lead", "event_time": "2026-04-02T10:10:00+00:00"}'],
    )
    _, read = read_logs_for_hours(engine, logs, RULES, [H10])
    assert [Path(p).name for p in read] == ["march.jsonl"]
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(log_file_index)).scalar() == 2
    # The file grows with a line of another hour: the index is refreshed.
    with march.open("ab") as handle:
        handle.write(
            b'{"event_id": "m2", "event_name": "lead", "event_time": "2026-03-05T08:00:00+00:00"}\n'
        )
    os.utime(march, ns=(march.stat().st_atime_ns, march.stat().st_mtime_ns + 1_000_000))
    later = datetime(2026, 3, 5, 8, tzinfo=UTC)
    frame = ingest_server_logs(engine, logs, RULES, [later]).frame
    assert list(frame["event_id"]) == ["m2"]


def test_seed_logs_hour_ten(engine, tmp_path: Path) -> None:
    """The committed seed logs: 5 conversions and 3 broken lines in hour 10, 1 and 1 in hour 11."""
    from conversion_platform_tests.seed_data import copy_seed_logs

    logs = tmp_path / "logs"
    copy_seed_logs(logs)
    result = ingest_server_logs(engine, logs, RULES, [H10, H11])
    assert result.per_hour[H10] == {"lines_parsed": 5, "lines_quarantined": 3, "lines_ignored": 2}
    assert result.per_hour[H11] == {"lines_parsed": 1, "lines_quarantined": 1, "lines_ignored": 0}
    reasons = sorted(q.reason for q in result.quarantined if q.hour == H10)
    assert reasons == [
        "event_time is missing",
        "invalid JSON: unexpected end of data",
        "not a combined access-log line",
    ]
