"""The one command line: `rayhistory <part> [flags]`. Each part owns its settings and its main."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import sys

from pydantic import Field

from . import __version__
from .config import CommonSettings, add_settings_arguments, settings_from_args
from .logsetup import setup_logging


class MarkDeadSettings(CommonSettings):
    namespace: str = Field(..., description="Kubernetes namespace of the RayCluster")
    cluster: str = Field(..., description="RayCluster name")
    session: str = Field("", description="one session to mark (default: every live session of the cluster)")
    reason: str = Field("marked dead by hand", description="why, recorded in the index")


# subcommand -> (module with `Settings` and `main(settings) -> int`, help)
PARTS = {
    "collector": ("rayhistory.collector.main", "run the collector sidecar (event ingest, log upload)"),
    "server": ("rayhistory.server.main", "run the history server (Ray Dashboard API and UI)"),
    "operator": ("rayhistory.operator.main", "run the Kopf operator"),
}


def _mark_dead(settings: MarkDeadSettings) -> int:
    from .index import mark_dead
    from .store import Store

    store = Store(settings.storage, settings.storage_options)
    marked = asyncio.run(
        mark_dead(store, settings.namespace, settings.cluster, settings.session or None, settings.reason)
    )
    print(json.dumps({"marked_dead": [s.session for s in marked]}))
    return 0


def build_parser() -> tuple[argparse.ArgumentParser, dict]:
    parser = argparse.ArgumentParser(prog="rayhistory", description="Ray History Server for Kubernetes")
    parser.add_argument("--version", action="version", version=f"rayhistory {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    runners: dict = {}
    for name, (module_name, help_text) in PARTS.items():
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:  # a part not built yet still shows in --help
            p = sub.add_parser(name, help=f"{help_text} (unavailable: {exc})")
            continue
        p = sub.add_parser(name, help=help_text, description=(module.__doc__ or "").strip().splitlines()[0])
        add_settings_arguments(p, module.Settings)
        runners[name] = (module.Settings, module.main)
    p = sub.add_parser("mark-dead", help="mark a cluster's sessions dead in the index (what the operator does)")
    add_settings_arguments(p, MarkDeadSettings)
    runners["mark-dead"] = (MarkDeadSettings, _mark_dead)
    return parser, runners


def main(argv: list[str] | None = None) -> int:
    parser, runners = build_parser()
    args = parser.parse_args(argv)
    if args.command not in runners:
        parser.error(f"{args.command} is not available in this build")
    settings_cls, run = runners[args.command]
    try:
        settings = settings_from_args(settings_cls, args)
    except Exception as exc:  # pydantic ValidationError: say which setting is wrong, no traceback
        print(f"rayhistory {args.command}: invalid configuration:\n{exc}", file=sys.stderr)
        return 2
    setup_logging(settings.log_level, settings.log_format)
    return int(run(settings) or 0)
