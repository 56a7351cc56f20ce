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

import orjson

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
