"""Launch a backfill of a range of hours through the webserver, as the UI's button does.

    python scripts/launch_backfill.py --from 2026-11-29-02:00 --to 2026-11-29-14:00 \\
        [--url http://localhost:3000] [--select delivery/meta_capi --select delivery_report]

An asset backfill: the daemon runs it, and because every asset takes a single-run backfill
policy it is one run over the range, in order (`dagster job backfill` would launch one run
per hour instead). Without `--select`, every asset of the code location is backfilled.
Prints the backfill id; follow it under Overview -> Backfills.
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime, timedelta

import requests

ASSETS = "{ assetNodes { assetKey { path } isPartitioned } }"
LAUNCH = """
mutation Launch($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message }
    ... on InvalidSubsetError { message }
    ... on UnauthorizedError { message }
  }
}
"""


def hours(first: str, last: str) -> list[str]:
    fmt = "%Y-%m-%d-%H:%M"
    start = datetime.strptime(first, fmt).replace(tzinfo=UTC)
    end = datetime.strptime(last, fmt).replace(tzinfo=UTC)
    if end < start:
        raise SystemExit("--to is before --from")
    count = int((end - start) / timedelta(hours=1)) + 1
    return [(start + timedelta(hours=i)).strftime(fmt) for i in range(count)]


def graphql(url: str, query: str, variables: dict | None = None) -> dict:
    response = requests.post(
        f"{url}/graphql", json={"query": query, "variables": variables or {}}, timeout=60
    )
    response.raise_for_status()
    body = response.json()
    if body.get("errors"):
        raise SystemExit(f"GraphQL error: {body['errors'][0].get('message')}")
    return body["data"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--from", dest="first", required=True, help="first hour (partition key)")
    parser.add_argument("--to", dest="last", required=True, help="last hour, included")
    parser.add_argument("--url", default="http://localhost:3000", help="the Dagster webserver")
    parser.add_argument(
        "--select", action="append", help="an asset key like delivery/meta_capi (repeatable)"
    )
    args = parser.parse_args(argv)
    nodes = graphql(args.url, ASSETS)["assetNodes"]
    keys = ["/".join(n["assetKey"]["path"]) for n in nodes if n["isPartitioned"]]
    if args.select:
        unknown = sorted(set(args.select) - set(keys))
        if unknown:
            raise SystemExit(f"unknown assets: {unknown}; known: {sorted(keys)}")
        keys = args.select
    params = {
        "partitionNames": hours(args.first, args.last),
        "assetSelection": [{"path": key.split("/")} for key in keys],
        "title": f"backfill {args.first}...{args.last}",
    }
    result = graphql(args.url, LAUNCH, {"params": params})["launchPartitionBackfill"]
    if result["__typename"] != "LaunchBackfillSuccess":
        print(f"not launched: {result.get('message', result['__typename'])}", file=sys.stderr)
        return 1
    print(
        f"backfill {result['backfillId']}: {len(keys)} assets, {len(params['partitionNames'])} hours; "
        f"see {args.url}/overview/backfills/{result['backfillId']}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
