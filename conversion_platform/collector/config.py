"""The collector's configuration: write keys per source, origins, proxies, limits, cookie.

Read from a YAML file (`seeds/collector.yaml` by default, or the file named by
`CONVERSION_PLATFORM_COLLECTOR_CONFIG`), then overridden by environment variables, so
production values never need a code or file edit:

| variable | meaning |
|---|---|
| `CONVERSION_PLATFORM_COLLECTOR_CONFIG` | the YAML file to read |
| `CONVERSION_PLATFORM_COLLECTOR_WRITE_KEYS` | `name=<sha256 of key>[:import],...`: sources added to (or replacing, by name) the file's |
| `CONVERSION_PLATFORM_COLLECTOR_ALLOWED_ORIGINS` | comma-separated origins allowed to send pixel hits from a browser (`*`: any) |
| `CONVERSION_PLATFORM_COLLECTOR_TRUSTED_PROXIES` | comma-separated addresses or CIDR ranges whose `X-Forwarded-For` is believed |
| `CONVERSION_PLATFORM_COLLECTOR_RATE_PER_SECOND` | pixel hits a client IP may send per second, sustained (0: no limit) |
| `CONVERSION_PLATFORM_COLLECTOR_RATE_BURST` | pixel hits a client IP may send at once |
| `CONVERSION_PLATFORM_COLLECTOR_COOKIE_DOMAIN` | `Domain` of the `_mpid` cookie (e.g. `shop.example`); unset: host-only |
| `CONVERSION_PLATFORM_COLLECTOR_COOKIE_SECURE` | `auto` (Secure when the request came over https), `always` or `never` |
| `CONVERSION_PLATFORM_COLLECTOR_SITES` | comma-separated public site keys accepted (empty: any well-formed key) |
| `CONVERSION_PLATFORM_COLLECTOR_SQLITE_SYNCHRONOUS` | `FULL` (default: an acknowledged event survives power loss) or `NORMAL` (survives a process crash) |

Write keys are never stored: only the SHA-256 of each key is configured, and a presented
key is hashed and compared in constant time (`write_keys`).
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from conversion_platform.settings import SEEDS_DIR

CONFIG_VARIABLE = "CONVERSION_PLATFORM_COLLECTOR_CONFIG"
WRITE_KEYS_VARIABLE = "CONVERSION_PLATFORM_COLLECTOR_WRITE_KEYS"
ALLOWED_ORIGINS_VARIABLE = "CONVERSION_PLATFORM_COLLECTOR_ALLOWED_ORIGINS"
TRUSTED_PROXIES_VARIABLE = "CONVERSION_PLATFORM_COLLECTOR_TRUSTED_PROXIES"
RATE_PER_SECOND_VARIABLE = "CONVERSION_PLATFORM_COLLECTOR_RATE_PER_SECOND"
RATE_BURST_VARIABLE = "CONVERSION_PLATFORM_COLLECTOR_RATE_BURST"
COOKIE_DOMAIN_VARIABLE = "CONVERSION_PLATFORM_COLLECTOR_COOKIE_DOMAIN"
COOKIE_SECURE_VARIABLE = "CONVERSION_PLATFORM_COLLECTOR_COOKIE_SECURE"
SITES_VARIABLE = "CONVERSION_PLATFORM_COLLECTOR_SITES"
SQLITE_SYNCHRONOUS_VARIABLE = "CONVERSION_PLATFORM_COLLECTOR_SQLITE_SYNCHRONOUS"

#: The server API's limits (the issue's contract: 1,000 events and 1 MB a request).
MAX_EVENTS_PER_REQUEST = 1_000
MAX_BODY_BYTES = 1_000_000
#: A pixel hit is one event; a larger body is not a pixel hit.
MAX_PIXEL_BODY_BYTES = 64_000

_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
_SOURCE_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
SITE_KEY = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


class CollectorConfigError(ValueError):
    """The configuration can't be used; the message says which entry and why."""


@dataclass(frozen=True)
class WriteKeySource:
    """A sender allowed to use the server API: its name, its key's SHA-256, its site.

    An `import_source` may set each event's `received_at` (and a pixel hit's, with the
    `X-Received-At` header): it is for replaying recorded traffic and historical imports,
    never for a live backend. Its pixel hits are not rate limited.
    """

    name: str
    key_sha256: str
    site: str | None = None
    import_source: bool = False


@dataclass(frozen=True)
class CollectorConfig:
    sources: tuple[WriteKeySource, ...] = ()
    allowed_origins: frozenset[str] = frozenset()
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    rate_per_second: float = 20.0
    rate_burst: int = 60
    cookie_domain: str | None = None
    cookie_secure: str = "auto"
    sites: frozenset[str] = frozenset()
    sqlite_synchronous: str = "FULL"
    max_events_per_request: int = MAX_EVENTS_PER_REQUEST
    max_body_bytes: int = MAX_BODY_BYTES
    max_pixel_body_bytes: int = MAX_PIXEL_BODY_BYTES
    #: Events waiting for a commit beyond this are refused with 503 (back-pressure).
    max_queued_events: int = 100_000
    #: How far an import source's `received_at` may lie in the past.
    import_max_age_hours: float = 24 * 30

    def origin_allowed(self, origin: str) -> bool:
        return "*" in self.allowed_origins or origin in self.allowed_origins


def _split(raw: str) -> list[str]:
    return [part.strip() for part in raw.split(",") if part.strip()]


def parse_source(name: str, spec: Mapping[str, Any]) -> WriteKeySource:
    if not _SOURCE_NAME.match(name):
        raise CollectorConfigError(f"source name {name!r} must match {_SOURCE_NAME.pattern}")
    key_sha256 = str(spec.get("key_sha256", "")).strip().lower()
    if not _SHA256_HEX.match(key_sha256):
        raise CollectorConfigError(
            f"source {name!r}: key_sha256 must be the 64-hex SHA-256 of the write key"
        )
    site = spec.get("site")
    if site is not None and not SITE_KEY.match(str(site)):
        raise CollectorConfigError(f"source {name!r}: site must match {SITE_KEY.pattern}")
    return WriteKeySource(
        name=name,
        key_sha256=key_sha256,
        site=str(site) if site is not None else None,
        import_source=bool(spec.get("import", False)),
    )


def parse_write_keys_variable(raw: str) -> list[WriteKeySource]:
    """`name=<sha256>[:import],...` as sources."""
    sources = []
    for entry in _split(raw):
        name, sep, rest = entry.partition("=")
        if not sep:
            raise CollectorConfigError(f"{WRITE_KEYS_VARIABLE}: entries are name=<sha256>[:import]")
        digest, _, flag = rest.partition(":")
        if flag not in ("", "import"):
            raise CollectorConfigError(f"{WRITE_KEYS_VARIABLE}: unknown flag {flag!r}")
        sources.append(
            parse_source(name.strip(), {"key_sha256": digest, "import": flag == "import"})
        )
    return sources


def parse_networks(
    values: list[str],
) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    try:
        return tuple(ipaddress.ip_network(v, strict=False) for v in values)
    except ValueError as exc:
        raise CollectorConfigError(f"trusted proxies: {exc}") from exc


def default_config_path() -> Path:
    raw = os.environ.get(CONFIG_VARIABLE)
    if raw:
        return Path(raw).expanduser()
    local = Path.cwd() / "seeds" / "collector.yaml"
    return local if local.exists() else SEEDS_DIR / "collector.yaml"


def config_from_mapping(data: Mapping[str, Any]) -> CollectorConfig:
    """A config from the YAML file's structure (see `seeds/collector.yaml`)."""
    sources_data = data.get("sources") or {}
    if not isinstance(sources_data, Mapping):
        raise CollectorConfigError("sources must map a source name to its settings")
    sources = tuple(parse_source(str(n), s or {}) for n, s in sources_data.items())
    rate = data.get("rate_limit") or {}
    cookie = data.get("cookie") or {}
    config = CollectorConfig(
        sources=sources,
        allowed_origins=frozenset(str(o).rstrip("/") for o in data.get("allowed_origins") or ()),
        trusted_proxies=parse_networks([str(p) for p in data.get("trusted_proxies") or ()]),
        rate_per_second=float(rate.get("per_second", 20.0)),
        rate_burst=int(rate.get("burst", 60)),
        cookie_domain=cookie.get("domain") or None,
        cookie_secure=str(cookie.get("secure", "auto")),
        sites=frozenset(str(s) for s in data.get("sites") or ()),
        sqlite_synchronous=str(data.get("sqlite_synchronous", "FULL")).upper(),
    )
    return validate_config(config)


def validate_config(config: CollectorConfig) -> CollectorConfig:
    if config.cookie_secure not in ("auto", "always", "never"):
        raise CollectorConfigError("cookie secure must be auto, always or never")
    if config.sqlite_synchronous not in ("FULL", "NORMAL", "EXTRA"):
        raise CollectorConfigError("sqlite_synchronous must be FULL, EXTRA or NORMAL")
    if config.rate_per_second < 0 or config.rate_burst < 1:
        raise CollectorConfigError("rate limit: per_second >= 0 and burst >= 1")
    names = [s.name for s in config.sources]
    if len(set(names)) != len(names):
        raise CollectorConfigError("source names must be unique")
    for site in config.sites:
        if not SITE_KEY.match(site):
            raise CollectorConfigError(f"site key {site!r} must match {SITE_KEY.pattern}")
    return config


def apply_environment(config: CollectorConfig, env: Mapping[str, str]) -> CollectorConfig:
    """`config` with the environment's overrides applied."""
    changes: dict[str, Any] = {}
    if env.get(WRITE_KEYS_VARIABLE):
        extra = parse_write_keys_variable(env[WRITE_KEYS_VARIABLE])
        overridden = {s.name for s in extra}
        changes["sources"] = (
            *(s for s in config.sources if s.name not in overridden),
            *extra,
        )
    if env.get(ALLOWED_ORIGINS_VARIABLE) is not None:
        changes["allowed_origins"] = frozenset(
            o.rstrip("/") for o in _split(env[ALLOWED_ORIGINS_VARIABLE])
        )
    if env.get(TRUSTED_PROXIES_VARIABLE) is not None:
        changes["trusted_proxies"] = parse_networks(_split(env[TRUSTED_PROXIES_VARIABLE]))
    if env.get(RATE_PER_SECOND_VARIABLE):
        changes["rate_per_second"] = float(env[RATE_PER_SECOND_VARIABLE])
    if env.get(RATE_BURST_VARIABLE):
        changes["rate_burst"] = int(env[RATE_BURST_VARIABLE])
    if env.get(COOKIE_DOMAIN_VARIABLE) is not None:
        changes["cookie_domain"] = env[COOKIE_DOMAIN_VARIABLE].strip() or None
    if env.get(COOKIE_SECURE_VARIABLE):
        changes["cookie_secure"] = env[COOKIE_SECURE_VARIABLE].strip().lower()
    if env.get(SITES_VARIABLE) is not None:
        changes["sites"] = frozenset(_split(env[SITES_VARIABLE]))
    if env.get(SQLITE_SYNCHRONOUS_VARIABLE):
        changes["sqlite_synchronous"] = env[SQLITE_SYNCHRONOUS_VARIABLE].strip().upper()
    return validate_config(replace(config, **changes))


def load_collector_config(
    path: Path | None = None, env: Mapping[str, str] | None = None
) -> CollectorConfig:
    """The file's configuration (none: defaults) with the environment's overrides."""
    path = path or default_config_path()
    data: Mapping[str, Any] = {}
    if path.exists():
        loaded = yaml.safe_load(path.read_text()) or {}
        if not isinstance(loaded, Mapping):
            raise CollectorConfigError(f"{path}: expected a mapping at the top level")
        data = loaded
    elif os.environ.get(CONFIG_VARIABLE):
        raise CollectorConfigError(f"{CONFIG_VARIABLE} names {path}, which does not exist")
    return apply_environment(config_from_mapping(data), os.environ if env is None else env)
