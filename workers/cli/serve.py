"""The long-running commands: `vcm api` (the HTTP shim) and `vcm run` (the whole stack)."""

from __future__ import annotations

import argparse

from .exits import EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    from ..stack import run_stack

    return run_stack(args)


def cmd_api(args: argparse.Namespace) -> int:
    from api_shim.app import serve
    from api_shim.settings import ApiSettings

    from ..settings import Settings

    settings = (ApiSettings.from_env(Settings.from_env(redis_url=args.redis_url))
                if args.redis_url else None)  # None: create_app reads the environment
    serve(host=args.host, port=args.port, settings=settings)
    return EXIT_OK
