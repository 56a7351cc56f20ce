"""Seeded synthetic traffic: what a shop's pixel, backend and servers would report.

People visit from ads (click ids in the landing URL), browse (page views), and convert.
Each conversion is seen by the pixel, the backend or both (sharing one `event_id`), and
some by the server logs only. People come back on other devices and are seen with
different identifiers. A share of records is broken on purpose: malformed log lines,
invalid events, junk identifiers. The same seed gives the same traffic.
"""

from __future__ import annotations

import gzip
import random
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import numpy as np
import orjson
import pandas as pd

from conversion_platform import events

FIRST_NAMES = ["Anna", "Björn", "Chloé", "David", "Émile", "Fatima", "Grace", "Hiro", "Inès", "José", "Kai", "Léa", "Mateo", "Nora", "Omar", "Priya", "Quinn", "Rosa", "Sven", "Zoë"]  # fmt: skip
LAST_NAMES = ["Smith", "Müller", "García", "O'Brien", "Nguyen", "Kowalski", "Dubois", "Rossi", "Tanaka", "Johansson", "Silva", "Khan"]  # fmt: skip
CITIES = [("San Francisco", "CA", "94103", "US"), ("New York", "NY", "10001-1234", "US"), ("Austin", "TX", "73301", "US"), ("London", "", "SW1A 1AA", "GB"), ("Berlin", "", "10115", "DE"), ("Paris", "", "75001", "FR")]  # fmt: skip
PHONE_FORMATS = {
    "US": lambda r: f"({r.randint(201, 989)}) {r.randint(200, 999)}-{r.randint(1000, 9999)}",
    "GB": lambda r: f"07{r.randint(400, 999)} {r.randint(100000, 999999)}",
    "DE": lambda r: f"+49 151 {r.randint(1000000, 9999999)}",
    "FR": lambda r: (
        f"06 {r.randint(10, 99)} {r.randint(10, 99)} {r.randint(10, 99)} {r.randint(10, 99)}"
    ),
}
USER_AGENTS = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_6) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.0 Safari/605.1.15",
    "Mozilla/5.0 (Linux; Android 15; Pixel 9) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Mobile Safari/537.36",
]
CONVERSION_MIX = [
    (events.PURCHASE, 0.45),
    (events.LEAD, 0.15),
    (events.SIGN_UP, 0.12),
    (events.ADD_TO_CART, 0.12),
    (events.INITIATE_CHECKOUT, 0.08),
    (events.START_TRIAL, 0.04),
    (events.SUBSCRIBE, 0.04),
]
SITE = "https://shop.example"
#: Share of page views arriving from a newsletter link with the reader's email in the URL.
NEWSLETTER_LINK_SHARE = 0.03


@dataclass
class Person:
    person_key: int
    email: str
    phone: str
    first_name: str
    last_name: str
    city: str
    region: str
    postal_code: str
    country: str
    external_id: str
    devices: list[tuple[str, str, str]] = field(default_factory=list)  # (mpid, ip, user agent)


@dataclass
class Traffic:
    """What one generation produced, by collection path."""

    pixel_events: list[dict[str, Any]] = field(default_factory=list)
    server_events: list[dict[str, Any]] = field(default_factory=list)
    log_lines: list[tuple[datetime, bytes]] = field(default_factory=list)  # JSON lines
    access_log_lines: list[tuple[datetime, bytes]] = field(default_factory=list)
    conversions: int = 0  # distinct conversions made by people


class TrafficGenerator:
    """Generates traffic for given hours; `people` sets how often people come back."""

    def __init__(self, seed: int = 7, people: int = 20_000) -> None:
        self.random = random.Random(seed)
        self.people = [self._person(i) for i in range(people)]
        # A second stream for newsletter links, so adding them left the main stream as it was.
        self.links = random.Random(seed * 7_919 + 1)

    def _hex(self, n: int) -> str:
        return f"{self.random.getrandbits(n * 4):0{n}x}"

    def _person(self, key: int) -> Person:
        r = self.random
        first, last = r.choice(FIRST_NAMES), r.choice(LAST_NAMES)
        city, region, postal, country = r.choice(CITIES)
        local = f"{first}.{last}".lower().replace("'", "").replace(" ", "")
        local = local.encode("ascii", "ignore").decode() or f"user{key}"
        domain = r.choice(["gmail.com", "example.com", "mail.example", "googlemail.com"])
        email = f"{local}{key}@{domain}"
        if r.random() < 0.1:
            email = "  " + email.upper() + " "  # padded and uppercase: normalisation's job
        person = Person(
            key,
            email,
            PHONE_FORMATS.get(country, PHONE_FORMATS["US"])(r),
            first,
            last,
            city,
            region,
            postal,
            country,
            f"cust-{key:07d}",
        )
        for _ in range(1 + (r.random() < 0.3) + (r.random() < 0.1)):
            person.devices.append(
                (
                    self._hex(32),
                    f"{r.randint(11, 223)}.{r.randint(0, 255)}.{r.randint(0, 255)}.{r.randint(1, 254)}",
                    r.choice(USER_AGENTS),
                )
            )
        return person

    def _moment(self, hour: datetime) -> datetime:
        return hour + timedelta(microseconds=self.random.randrange(3_600_000_000))

    def generate(
        self,
        hours: list[datetime],
        conversions_per_hour: int = 2_000,
        *,
        duplicate_share: float = 0.5,
        invalid_share: float = 0.02,
        broken_line_share: float = 0.01,
        page_views_per_conversion: float = 0.6,
    ) -> Traffic:
        """Traffic for each hour; `duplicate_share` of conversions reach both pixel and backend."""
        r = self.random
        traffic = Traffic()
        names, weights = zip(*CONVERSION_MIX, strict=True)
        for hour in hours:
            for _ in range(int(conversions_per_hour * page_views_per_conversion)):
                person = r.choice(self.people)
                mpid, ip, agent = r.choice(person.devices)
                when = self._moment(hour)
                traffic.pixel_events.append(self._page_view(mpid, ip, agent, when, person))
            for _ in range(conversions_per_hour):
                traffic.conversions += 1
                person = r.choice(self.people)
                name = r.choices(names, weights)[0]
                when = self._moment(hour)
                self._conversion(traffic, person, name, when, duplicate_share, invalid_share)
            for _ in range(int(conversions_per_hour * broken_line_share)):
                traffic.log_lines.append((self._moment(hour), self._broken_line()))
        return traffic

    def _page_view(
        self, mpid: str, ip: str, agent: str, when: datetime, person: Person | None = None
    ) -> dict[str, Any]:
        r = self.random
        query: dict[str, str] = {}
        roll = r.random()
        if roll < 0.25:
            query["fbclid"] = "IwAR" + self._hex(20)
        elif roll < 0.5:
            query["gclid"] = "Cj0K" + self._hex(24)
        elif roll < 0.6:
            query["ttclid"] = "E.C.P." + self._hex(20)
        elif roll < 0.65:
            query["ScCid"] = self._hex(16)
        if person is not None and self.links.random() < NEWSLETTER_LINK_SHARE:
            # A newsletter link that carries the reader's address: a real-world leak path
            # that ingest must scrub before anything is stored.
            query.update({"utm_source": "newsletter", "email": person.email.strip()})
        url = f"{SITE}/products/{r.randint(1, 500)}" + (f"?{urlencode(query)}" if query else "")
        event = {
            "event_id": self._hex(32),
            "event_name": events.PAGE_VIEW,
            "event_time": when.isoformat(),
            "received_at": when + timedelta(milliseconds=r.randint(20, 900)),
            "page_url": url,
            "mpid": mpid,
            "client_ip": ip,
            "user_agent": agent,
            "fbp": f"fb.1.{int(when.timestamp() * 1000)}.{r.randint(10**9, 10**10)}",
        }
        for parameter, value in query.items():
            if parameter in events.CLICK_ID_PARAMETERS:
                event[events.CLICK_ID_PARAMETERS[parameter]] = value
        return event

    def _conversion(
        self,
        traffic: Traffic,
        person: Person,
        name: str,
        when: datetime,
        duplicate_share: float,
        invalid_share: float,
    ) -> None:
        r = self.random
        mpid, ip, agent = r.choice(person.devices)
        event_id = self._hex(32)
        order_id = f"ord-{self._hex(10)}" if name == events.PURCHASE else None
        value = (
            round(r.uniform(5, 400), 2)
            if name in (events.PURCHASE, events.SUBSCRIBE, events.START_TRIAL)
            else None
        )
        currency = "USD" if person.country == "US" else ("GBP" if person.country == "GB" else "EUR")
        consent = (
            "denied"
            if r.random() < 0.04
            else r.choice(["granted", "granted", "granted", "unknown"])
        )
        base = {
            "event_id": event_id,
            "event_name": name,
            "event_time": when.isoformat(),
            "value": value,
            "currency": currency if value is not None else None,
            "order_id": order_id,
            "consent_ad_user_data": consent,
            "consent_ad_personalization": consent,
        }
        if value is not None:
            base["items"] = [
                {"id": f"sku-{r.randint(1, 500)}", "quantity": r.randint(1, 3), "price": value}
            ]
        if r.random() < invalid_share:
            broken = r.choice(["negative_value", "bad_currency", "bad_name", "too_old", "future"])
            if broken == "negative_value":
                base["value"], base["currency"] = -abs(value or 10.0), currency
            elif broken == "bad_currency":
                base["value"], base["currency"] = value or 10.0, "DOLLARS"
            elif broken == "bad_name":
                base["event_name"] = "Purchase Completed!!"
            elif broken == "too_old":
                base["event_time"] = (when - timedelta(days=30)).isoformat()
            else:
                base["event_time"] = (when + timedelta(hours=2)).isoformat()
        page = (
            f"{SITE}/checkout/thank-you"
            if name == events.PURCHASE
            else f"{SITE}/{name.replace('_', '-')}"
        )
        pixel = {
            **base,
            "page_url": page,
            "referrer": f"{SITE}/cart",
            "mpid": mpid,
            "client_ip": ip,
            "user_agent": agent,
            "fbp": f"fb.1.{int(when.timestamp() * 1000) - 86_400_000}.{r.randint(10**9, 10**10)}",
            "received_at": when + timedelta(milliseconds=r.randint(20, 900)),
        }
        if r.random() < 0.15:
            pixel["email"] = person.email  # a form field the pixel saw
        server = {
            **base,
            "email": person.email
            if r.random() > 0.02
            else r.choice(["undefined", "n/a", "not-an-email"]),
            "phone": person.phone if r.random() < 0.7 else None,
            "first_name": person.first_name,
            "last_name": person.last_name,
            "city": person.city,
            "region": person.region or None,
            "postal_code": person.postal_code,
            "country": person.country,
            "external_id": person.external_id,
            "client_ip": ip if r.random() < 0.6 else None,
            "user_agent": agent if r.random() < 0.6 else None,
            "received_at": when + timedelta(seconds=r.uniform(0.5, 20)),
        }
        roll = r.random()
        if roll < duplicate_share:
            traffic.pixel_events.append(pixel)
            traffic.server_events.append(server)
        elif roll < duplicate_share + (1 - duplicate_share) * 0.45:
            traffic.pixel_events.append(pixel)  # the backend never reported it
        elif roll < duplicate_share + (1 - duplicate_share) * 0.85:
            traffic.server_events.append(server)  # an ad blocker stopped the pixel
        else:
            # Only the server logs saw it: a JSON line or an access-log hit.
            logged = when + timedelta(milliseconds=r.randint(1, 500))
            if name == events.PURCHASE and r.random() < 0.5 and value is not None and value >= 0:
                query = urlencode({"order_id": order_id, "value": value, "currency": currency})
                stamp = logged.strftime("%d/%b/%Y:%H:%M:%S +0000")
                line = f'{ip} - - [{stamp}] "GET /checkout/thank-you?{query} HTTP/1.1" 200 5120 "{SITE}/cart" "{agent}"'
                traffic.access_log_lines.append((logged, line.encode()))
            else:
                record = {k: v for k, v in server.items() if k != "received_at" and v is not None}
                record["logged_at"] = logged.isoformat()
                traffic.log_lines.append((logged, orjson.dumps(record)))

    def _broken_line(self) -> bytes:
        r = self.random
        kind = r.choice(["truncated", "not_utf8", "garbage", "no_time", "array"])
        if kind == "truncated":
            return (
                b'{"event_id": "'
                + self._hex(8).encode()
                + b'", "event_name": "purchase", "email": "someone@exa'
            )
        if kind == "not_utf8":
            return b'{"event_name": "lead", "first_name": "Ren\xe9e"}'
        if kind == "garbage":
            return b"\x00\x01 GET /?? garbage ###"
        if kind == "no_time":
            return orjson.dumps(
                {"event_id": self._hex(16), "event_name": "lead", "email": "x@example.com"}
            )
        return b'["not", "an", "object"]'


def write_server_logs(traffic: Traffic, logs_dir: Path, day: datetime) -> list[Path]:
    """Write the JSON lines (gzip) and the access log of `traffic` under `logs_dir`."""
    logs_dir.mkdir(parents=True, exist_ok=True)
    stamp = day.strftime("%Y%m%d")
    json_path = logs_dir / f"backend-{stamp}.jsonl.gz"
    with gzip.open(json_path, "wb") as handle:
        for _, line in sorted(traffic.log_lines, key=lambda x: x[0]):
            handle.write(line + b"\n")
    access_path = logs_dir / f"access-{stamp}.log"
    with access_path.open("wb") as handle:
        for _, line in sorted(traffic.access_log_lines, key=lambda x: x[0]):
            handle.write(line + b"\n")
    return [json_path, access_path]


def last_complete_hours(count: int, now: datetime | None = None) -> list[datetime]:
    """The `count` most recent complete UTC hours, oldest first."""
    now = now or datetime.now(UTC)
    current = now.replace(minute=0, second=0, microsecond=0)
    return [current - timedelta(hours=count - i) for i in range(count)]


# --- bulk mode: the same traffic, vectorised ------------------------------------------------
#
# `TrafficGenerator` builds one Python dict per event: right for the demo and tests, far
# too slow for the million-event hours the benchmarks need. `generate_bulk` draws the same
# kinds of people, devices, conversions, collection paths, duplicates and broken records
# with numpy, column by column, and returns incoming records (plaintext, as a pixel, a
# backend or a log line sends them) as DataFrames. Same seed, same traffic.

#: What the bulk generator breaks on purpose (what validation must quarantine).
INVALID_KINDS: tuple[str, ...] = ("negative_value", "bad_currency", "bad_name", "too_old", "future")
_BULK_COLUMNS: tuple[str, ...] = (*events.INCOMING_FIELDS, "logged_at")
_VALUE_EVENTS = (events.PURCHASE, events.SUBSCRIBE, events.START_TRIAL)
#: Click ids the pixel forwards from the landing URL it stored (share of pixel copies).
_PIXEL_CLICK_IDS: tuple[tuple[str, str, float], ...] = (
    ("gclid", "Cj0K", 0.20),
    ("fbclid", "IwAR", 0.15),
    ("ttclid", "E.C.P.", 0.08),
    ("sccid", "", 0.04),
)
_JUNK_EMAILS = np.array(["undefined", "n/a", "not-an-email"], dtype=object)
_COUNTRY_CURRENCY = {"US": "USD", "GB": "GBP"}
_MICROS_PER_HOUR = 3_600_000_000
_LATEST_RECEIPT_MICROS = 20_000_001


@dataclass
class People:
    """A pool of people, one row per person, and their devices, one row per device."""

    frame: (
        pd.DataFrame
    )  # email, phone, first_name, last_name, city, region, postal_code, country, external_id
    device_start: np.ndarray  # first device row of each person
    device_count: np.ndarray
    devices: pd.DataFrame  # mpid, client_ip, user_agent


@dataclass
class BulkTraffic:
    """Incoming records of one bulk generation, by collection path, plus what was made.

    `pixel` and `server` carry `received_at` (what the collector stamps); `log` carries
    `logged_at` as ISO text (what a log line holds). Times are UTC.
    """

    pixel: pd.DataFrame
    server: pd.DataFrame
    log: pd.DataFrame
    conversions: int  # distinct conversions
    seen_twice: int  # conversions reported by both the pixel and the backend
    invalid: int  # conversions broken on purpose (both copies broken alike)
    people: int

    @property
    def records(self) -> int:
        return len(self.pixel) + len(self.server) + len(self.log)


def _hex_strings(rng: np.random.Generator, count: int, digits: int) -> np.ndarray:
    """`count` random lowercase hex strings of `digits` characters (digits even)."""
    width = digits // 2
    text = rng.bytes(width * count).hex()
    return np.array([text[i : i + digits] for i in range(0, digits * count, digits)], dtype=object)


def _pick(rng: np.random.Generator, options: list[str] | tuple[str, ...], count: int) -> np.ndarray:
    return np.asarray(options, dtype=object)[rng.integers(0, len(options), count)]


def _phones(rng: np.random.Generator, countries: np.ndarray) -> np.ndarray:
    """Phone numbers written the way people type them in each country."""
    n = len(countries)
    a, b, c = (rng.integers(lo, hi, n) for lo, hi in ((201, 990), (200, 1000), (1000, 10000)))
    gb_a, gb_b = rng.integers(400, 1000, n), rng.integers(100000, 1000000, n)
    de = rng.integers(1000000, 10000000, n)
    fr = rng.integers(10, 100, (n, 4))
    out = np.empty(n, dtype=object)
    for i, country in enumerate(countries):
        if country == "GB":
            out[i] = f"07{gb_a[i]} {gb_b[i]}"
        elif country == "DE":
            out[i] = f"+49 151 {de[i]}"
        elif country == "FR":
            out[i] = f"06 {fr[i, 0]} {fr[i, 1]} {fr[i, 2]} {fr[i, 3]}"
        else:
            out[i] = f"({a[i]}) {b[i]}-{c[i]}"
    return out


def generate_people(rng: np.random.Generator, count: int) -> People:
    """`count` people with 1 to 3 devices each, drawn like `TrafficGenerator`'s."""
    first = _pick(rng, FIRST_NAMES, count)
    last = _pick(rng, LAST_NAMES, count)
    place = rng.integers(0, len(CITIES), count)
    cities = np.array(CITIES, dtype=object)
    city, region, postal, country = (cities[place, i] for i in range(4))
    locals_ = {
        (f, la): f"{f}.{la}".lower()
        .replace("'", "")
        .replace(" ", "")
        .encode("ascii", "ignore")
        .decode()
        for f in FIRST_NAMES
        for la in LAST_NAMES
    }
    domains = _pick(rng, ["gmail.com", "example.com", "mail.example", "googlemail.com"], count)
    email = np.array(
        [
            f"{locals_[(f, la)] or 'user'}{key}@{d}"
            for key, (f, la, d) in enumerate(zip(first, last, domains, strict=True))
        ],
        dtype=object,
    )
    padded = rng.random(count) < 0.1  # padded and uppercase: normalisation's job
    email[padded] = ["  " + e.upper() + " " for e in email[padded]]
    frame = pd.DataFrame(
        {
            "email": email,
            "phone": _phones(rng, country),
            "first_name": first,
            "last_name": last,
            "city": city,
            "region": np.where(region == "", None, region),
            "postal_code": postal,
            "country": country,
            "external_id": np.array([f"cust-{k:07d}" for k in range(count)], dtype=object),
        }
    )
    roll = rng.random((count, 2))
    device_count = 1 + (roll[:, 0] < 0.3) + (roll[:, 1] < 0.1)
    device_start = np.concatenate(([0], np.cumsum(device_count)[:-1]))
    total = int(device_count.sum())
    octets = rng.integers(0, 256, (total, 4))
    octets[:, 0] = rng.integers(11, 224, total)
    octets[:, 3] = rng.integers(1, 255, total)
    devices = pd.DataFrame(
        {
            "mpid": _hex_strings(rng, total, 32),
            "client_ip": np.array([f"{a}.{b}.{c}.{d}" for a, b, c, d in octets], dtype=object),
            "user_agent": _pick(rng, USER_AGENTS, total),
        }
    )
    return People(frame, device_start, device_count, devices)


def _iso(micros: np.ndarray) -> np.ndarray:
    """ISO 8601 UTC text (`...Z`) of microseconds since the epoch."""
    return np.datetime_as_string(micros.astype("datetime64[us]"), unit="us", timezone="UTC").astype(
        object
    )


def _micros(times: pd.Series) -> np.ndarray:
    """Microseconds since the epoch of a UTC datetime series."""
    return (
        times.dt.tz_convert("UTC")
        .dt.tz_localize(None)
        .to_numpy()
        .astype("datetime64[us]")
        .astype(np.int64)
    )


def _where(mask: np.ndarray, values: np.ndarray | object) -> np.ndarray:
    """`values` where `mask`, None elsewhere (an object column)."""
    out = np.full(len(mask), None, dtype=object)
    out[mask] = values[mask] if isinstance(values, np.ndarray) else values
    return out


def generate_bulk(
    hours: list[datetime],
    records_per_hour: int,
    *,
    seed: int = 7,
    duplicate_share: float = 0.2,
    invalid_share: float = 0.02,
    log_share: float = 0.0,
    people: int | None = None,
) -> BulkTraffic:
    """Incoming records of `hours`, `records_per_hour` records in each.

    `duplicate_share` of the records are second copies (a conversion the pixel and the
    backend both reported, sharing its `event_id`); `invalid_share` of the conversions
    are broken on purpose (negative value, currency that isn't ISO 4217, bad event name,
    event time 30 days old or 2 hours ahead); of the conversions seen once, `log_share`
    were seen only by the server logs (JSON lines), the rest by the pixel or the backend.
    `people` (default: a quarter of all the conversions, so a person converts about four
    times in the window) sets how often people come back.
    """
    rng = np.random.default_rng(seed)
    per_hour_twice = round(records_per_hour * duplicate_share)
    per_hour_conversions = records_per_hour - per_hour_twice
    n = per_hour_conversions * len(hours)
    pool = generate_people(rng, people or max(100, n // 4))

    hour_starts = np.array([int(h.timestamp() * 1_000_000) for h in hours], dtype=np.int64)
    # Made early enough in the hour to be received (at most 20 s later) in it too.
    latest = _MICROS_PER_HOUR - _LATEST_RECEIPT_MICROS
    when = np.repeat(hour_starts, per_hour_conversions) + rng.integers(0, latest, n)
    # Which paths saw each conversion: both, pixel only, backend only, logs only.
    route = np.empty(n, dtype=np.int8)
    for h in range(len(hours)):
        block = slice(h * per_hour_conversions, (h + 1) * per_hour_conversions)
        order = rng.permutation(per_hour_conversions)
        single = rng.random(per_hour_conversions - per_hour_twice)
        log_cut = log_share
        pixel_cut = log_cut + (1 - log_share) * 0.45
        single_route = np.where(single < log_cut, 3, np.where(single < pixel_cut, 1, 2))
        routes = np.concatenate((np.zeros(per_hour_twice, dtype=np.int8), single_route))
        route[block] = routes[order]

    person = rng.integers(0, len(pool.frame), n)
    device = pool.device_start[person] + rng.integers(0, 1 << 30, n) % pool.device_count[person]
    names, weights = zip(*CONVERSION_MIX, strict=True)
    p = np.array(weights) / sum(weights)
    name = np.asarray(names, dtype=object)[rng.choice(len(names), n, p=p)]
    has_value = np.isin(name, _VALUE_EVENTS)
    value = np.round(rng.uniform(5, 400, n), 2)
    countries = pool.frame["country"].to_numpy()[person]
    currency = np.array([_COUNTRY_CURRENCY.get(c, "EUR") for c in countries], dtype=object)
    consent_roll = rng.random(n)
    consent = np.where(
        consent_roll < 0.04,
        events.CONSENT_DENIED,
        np.where(consent_roll < 0.04 + 0.96 * 0.75, events.CONSENT_GRANTED, events.CONSENT_UNKNOWN),
    ).astype(object)
    sku = rng.integers(1, 501, n)
    quantity = rng.integers(1, 4, n)
    event_time = when.copy()
    event_name = name.copy()
    value_out = np.where(has_value, value, np.nan)
    currency_out = _where(has_value, currency)

    broken = rng.random(n) < invalid_share
    kind = _pick(rng, INVALID_KINDS, n)
    for label in INVALID_KINDS:
        mask = broken & (kind == label)
        if label == "negative_value":
            value_out[mask] = -np.where(has_value[mask], value[mask], 10.0)
            currency_out[mask] = currency[mask]
        elif label == "bad_currency":
            value_out[mask] = np.where(has_value[mask], value[mask], 10.0)
            currency_out[mask] = "DOLLARS"
        elif label == "bad_name":
            event_name[mask] = "Purchase Completed!!"
        elif label == "too_old":
            event_time[mask] -= 30 * 24 * _MICROS_PER_HOUR
        else:
            event_time[mask] += 2 * _MICROS_PER_HOUR
    is_purchase = name == events.PURCHASE
    items = np.full(n, None, dtype=object)
    items[has_value] = [
        f'[{{"id":"sku-{s}","quantity":{q},"price":{v}}}]'
        for s, q, v in zip(sku[has_value], quantity[has_value], value[has_value], strict=True)
    ]
    base = {
        "event_id": _hex_strings(rng, n, 32),
        "event_name": event_name,
        "event_time": _iso(event_time),
        "value": np.where(np.isnan(value_out), None, value_out.astype(object)),
        "currency": currency_out,
        "order_id": _where(is_purchase, np.array(["ord-" + h for h in _hex_strings(rng, n, 10)])),
        "items": items,
        "consent_ad_user_data": consent,
        "consent_ad_personalization": consent,
    }
    people_frame = pool.frame.iloc[person].reset_index(drop=True)
    device_frame = pool.devices.iloc[device].reset_index(drop=True)
    pages = np.array(
        [
            f"{SITE}/checkout/thank-you"
            if nm == events.PURCHASE
            else f"{SITE}/{nm.replace('_', '-')}"
            for nm in name
        ],
        dtype=object,
    )

    def frame_of(columns: dict[str, np.ndarray], rows: np.ndarray) -> pd.DataFrame:
        # Fields a path never sends are left out (readers take absent fields as missing).
        return pd.DataFrame({c: columns[c][rows] for c in _BULK_COLUMNS if c in columns})

    pixel_columns = {
        **base,
        "page_url": pages,
        "referrer": np.full(n, f"{SITE}/cart", dtype=object),
        "mpid": device_frame["mpid"].to_numpy(),
        "client_ip": device_frame["client_ip"].to_numpy(),
        "user_agent": device_frame["user_agent"].to_numpy(),
        "fbp": np.array(
            [
                f"fb.1.{ms}.{r}"
                for ms, r in zip(
                    when // 1000 - 86_400_000, rng.integers(10**9, 10**10, n), strict=True
                )
            ],
            dtype=object,
        ),
        "email": _where(rng.random(n) < 0.15, people_frame["email"].to_numpy()),
    }
    for column, prefix, share in _PIXEL_CLICK_IDS:
        pixel_columns[column] = _where(
            rng.random(n) < share, np.array([prefix + h for h in _hex_strings(rng, n, 20)])
        )
    pixel_received = when + rng.integers(20_000, 900_001, n)

    emails = people_frame["email"].to_numpy().copy()
    junk = rng.random(n) < 0.02
    emails[junk] = _pick(rng, list(_JUNK_EMAILS), int(junk.sum()))
    server_columns = {
        **base,
        "email": emails,
        "phone": _where(rng.random(n) < 0.7, people_frame["phone"].to_numpy()),
        **{
            c: people_frame[c].to_numpy()
            for c in (
                "first_name",
                "last_name",
                "city",
                "region",
                "postal_code",
                "country",
                "external_id",
            )
        },
        "client_ip": _where(rng.random(n) < 0.6, device_frame["client_ip"].to_numpy()),
        "user_agent": _where(rng.random(n) < 0.6, device_frame["user_agent"].to_numpy()),
    }
    server_received = when + rng.integers(500_000, _LATEST_RECEIPT_MICROS, n)
    logged = when + rng.integers(1_000, 500_001, n)

    pixel_rows = np.flatnonzero((route == 0) | (route == 1))
    server_rows = np.flatnonzero((route == 0) | (route == 2))
    log_rows = np.flatnonzero(route == 3)
    pixel = frame_of(pixel_columns, pixel_rows)
    pixel["received_at"] = pd.to_datetime(pixel_received[pixel_rows], unit="us", utc=True)
    server = frame_of(server_columns, server_rows)
    server["received_at"] = pd.to_datetime(server_received[server_rows], unit="us", utc=True)
    log = frame_of(server_columns, log_rows)
    log["logged_at"] = _iso(logged[log_rows])
    return BulkTraffic(
        pixel=pixel,
        server=server,
        log=log,
        conversions=n,
        seen_twice=int((route == 0).sum()),
        invalid=int(broken.sum()),
        people=len(pool.frame),
    )


def _broken_lines(rng: np.random.Generator, count: int) -> list[bytes]:
    """Lines a log can hold that are not conversions: cut, not UTF-8, garbage, no time, arrays."""
    lines = []
    for kind, token in zip(rng.integers(0, 5, count), _hex_strings(rng, count, 8), strict=True):
        if kind == 0:
            lines.append(
                b'{"event_id": "'
                + token.encode()
                + b'", "event_name": "purchase", "email": "someone@exa'
            )
        elif kind == 1:
            lines.append(b'{"event_name": "lead", "first_name": "Ren\xe9e"}')
        elif kind == 2:
            lines.append(b"\x00\x01 GET /?? garbage ###")
        elif kind == 3:
            lines.append(
                orjson.dumps({"event_id": token, "event_name": "lead", "email": "x@example.com"})
            )
        else:
            lines.append(b'["not", "an", "object"]')
    return lines


def _json_fragments(name: str, values: np.ndarray) -> list[bytes]:
    """`"name":<value as JSON>` for each value (empty for missing ones); `items` is JSON text."""
    key = orjson.dumps(name) + b":"
    if name == "items":
        return [key + v.encode() if isinstance(v, str) else b"" for v in values]
    missing = pd.isna(values)
    uniques = pd.unique(values[~missing])
    if len(uniques) < len(values) // 4:
        encoded = {u: key + orjson.dumps(u) for u in uniques}
        return [b"" if m else encoded[v] for v, m in zip(values, missing, strict=True)]
    dumps = orjson.dumps
    return [b"" if m else key + dumps(v) for v, m in zip(values, missing, strict=True)]


def json_lines_of(frame: pd.DataFrame, logged_at: np.ndarray) -> list[bytes]:
    """One JSON object line per row of incoming records, missing fields left out.

    `logged_at` is the ISO text each line is stamped with; `items` (JSON text in the frame)
    is written as the array it holds.
    """
    columns = [c for c in frame.columns if c not in ("received_at", "logged_at")]
    parts = [_json_fragments(c, frame[c].to_numpy(dtype=object)) for c in columns]
    parts.append(_json_fragments("logged_at", np.asarray(logged_at, dtype=object)))
    return [b"{" + b",".join([p for p in row if p]) + b"}" for row in zip(*parts, strict=True)]


def write_bulk_json_log(
    traffic: BulkTraffic,
    path: Path,
    *,
    include_collected: bool = True,
    broken_share: float = 0.005,
    seed: int = 7,
    compress: bool = False,
) -> dict[str, int]:
    """Write `traffic` as one JSON-lines server log, in log-time order, with broken lines.

    With `include_collected` the pixel's and the backend's copies are logged too (a site
    whose servers log every event they receive), so the log holds the duplicates.
    Returns the line counts by kind.
    """
    rng = np.random.default_rng(seed + 1)
    frames = [traffic.log]
    if include_collected:
        frames = [traffic.pixel, traffic.server, traffic.log]
    lines: list[bytes] = []
    stamps: list[np.ndarray] = []
    for frame in frames:
        if frame.empty:
            continue
        if "received_at" in frame.columns and frame["received_at"].notna().all():
            micros = _micros(frame["received_at"])
        else:
            micros = (
                pd.to_datetime(frame["logged_at"], utc=True)
                .to_numpy()
                .astype("datetime64[us]")
                .astype(np.int64)
            )
        lines.extend(json_lines_of(frame, _iso(micros)))
        stamps.append(micros)
    order = np.argsort(
        np.concatenate(stamps) if stamps else np.array([], dtype=np.int64), kind="stable"
    )
    records = len(lines)
    broken = _broken_lines(rng, int(records * broken_share))
    # A broken line sits between two readable ones, so it belongs to their hour.
    slots = np.sort(rng.integers(1, max(2, records), len(broken)))
    path.parent.mkdir(parents=True, exist_ok=True)
    opener = gzip.open if compress else open
    with opener(path, "wb") as handle:  # type: ignore[operator]
        b = 0
        chunk: list[bytes] = []
        for position, index in enumerate(order):
            while b < len(broken) and slots[b] == position:
                chunk.append(broken[b])
                b += 1
            chunk.append(lines[index])
            if len(chunk) >= 50_000:
                handle.write(b"\n".join(chunk) + b"\n")
                chunk = []
        chunk.extend(broken[b:])
        if chunk:
            handle.write(b"\n".join(chunk) + b"\n")
    return {"records": records, "broken": len(broken)}
