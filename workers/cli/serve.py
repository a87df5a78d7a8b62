"""The long-running commands: `vcm api` (the HTTP shim) and `vcm run` (the whole stack)."""

from __future__ import annotations

import argparse

from .exits import EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    from ..stack import run_stack

    return run_stack(args)


def cmd_controller(args: argparse.Namespace) -> int:
    from ..adapters.kube_config import NoKubeConfig
    from ..controller.operator import run
    from ..settings import Settings
    from .exits import CliError

    settings = (Settings.from_env(redis_url=args.redis_url) if args.redis_url
                else Settings.from_env())
    try:
        return run(settings, liveness=args.liveness, verbose=args.verbose)
    except NoKubeConfig as exc:
        raise CliError(f"the controller needs the Kubernetes API: {exc}") from None


def cmd_api(args: argparse.Namespace) -> int:
    from api_shim.app import serve
    from api_shim.settings import ApiSettings

    from ..settings import Settings

    settings = (ApiSettings.from_env(Settings.from_env(redis_url=args.redis_url))
                if args.redis_url else None)  # None: create_app reads the environment
    serve(host=args.host, port=args.port, settings=settings)
    return EXIT_OK
