"""Write keys: how a site's backend proves which source it is.

Keys are never stored: the configuration holds each key's SHA-256, and a presented key is
hashed and compared against every source's digest with `hmac.compare_digest`, all of
them every time, so neither the comparison nor the number of sources leaks through timing.

`python -m conversion_platform.collector.write_keys [NAME]` prints a fresh key and the
configuration line for it.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import sys
from collections.abc import Sequence

from conversion_platform.collector.config import WriteKeySource

KEY_PREFIX = "cpk_"


def hash_write_key(key: str) -> str:
    """Lowercase hex SHA-256 of the key (what the configuration stores)."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def generate_write_key() -> str:
    """A new random write key (256 bits)."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def bearer_token(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, or None."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def authenticate(token: str | None, sources: Sequence[WriteKeySource]) -> WriteKeySource | None:
    """The source whose key is `token`, or None; constant time in the key's content."""
    if token is None:
        return None
    presented = hash_write_key(token).encode()
    found: WriteKeySource | None = None
    for source in sources:
        if hmac.compare_digest(presented, source.key_sha256.encode()):
            found = source
    return found


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    name = args[0] if args else "shop-backend"
    key = generate_write_key()
    print(f"write key (give it to the sender, store it as a secret): {key}")
    print("seeds/collector.yaml:")
    print(f"  sources:\n    {name}:\n      key_sha256: {hash_write_key(key)}")
    print(f"or: CONVERSION_PLATFORM_COLLECTOR_WRITE_KEYS={name}={hash_write_key(key)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
