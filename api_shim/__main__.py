"""`python -m api_shim [--host H] [--port P] [--loop L] [--http H]`: the HTTP shim, as `vcm api`
runs it."""

from __future__ import annotations

import argparse

from .app import serve


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m api_shim", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--loop", choices=("auto", "asyncio", "uvloop"), default="auto",
                        help="uvicorn's event loop (auto: uvloop when installed)")
    parser.add_argument("--http", choices=("auto", "h11", "httptools"), default="auto",
                        help="uvicorn's HTTP protocol (auto: httptools when installed)")
    args = parser.parse_args()
    serve(host=args.host, port=args.port, log_level=args.log_level, loop=args.loop,
          http=args.http)


if __name__ == "__main__":
    main()
