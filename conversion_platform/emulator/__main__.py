"""`python -m conversion_platform.emulator [--host H] [--port P]`: serve the emulator."""

from __future__ import annotations

import argparse

from conversion_platform.emulator.server import serve


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Local ad-platform API emulator.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8799)
    args = parser.parse_args(argv)
    serve(args.host, args.port)


if __name__ == "__main__":
    main()
