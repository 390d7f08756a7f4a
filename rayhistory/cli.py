"""The one command line: `rayhistory <part> [flags]`. Each part owns its settings and its main."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import sys
from collections.abc import Callable

from pydantic import Field

from . import __version__
from .config import CommonSettings, add_settings_arguments, settings_from_args
from .logsetup import setup_logging


class MarkDeadSettings(CommonSettings):
    namespace: str = Field(..., description="Kubernetes namespace of the RayCluster")
    cluster: str = Field(..., description="RayCluster name")
    session: str = Field("", description="one session to mark (default: every live session of the cluster)")
    reason: str = Field("marked dead by hand", description="why, recorded in the index")
    end_time: str = Field("", description="when the session ended (RFC3339, e.g. 2026-11-23T14:00:00Z); default: "
                                          "its last recorded activity (last event batch, endpoint poll or flush)")


# subcommand -> (module with `Settings` and `main(settings) -> int`, help). A part's module is imported
# only when that part runs: the collector sidecar must not pay for kopf and kubernetes.
PARTS = {
    "collector": ("rayhistory.collector.main", "run the collector sidecar (event ingest, log upload)"),
    "server": ("rayhistory.server.main", "run the history server (Ray Dashboard API and UI)"),
    "operator": ("rayhistory.operator.main", "run the Kopf operator"),
    "mark-dead": ("rayhistory.cli", "mark a cluster's sessions dead in the index (what the operator does)"),
    "import": ("rayhistory.importer", "capture a running Ray dashboard into storage as an imported session "
                                      "(for clusters without a collector)"),
}


def _mark_dead(settings: MarkDeadSettings) -> int:
    from .index import mark_dead
    from .store import Store

    from .events import ts_ms

    try:
        end_ms = ts_ms(settings.end_time) if settings.end_time else None
    except ValueError as exc:
        print(f"--end-time: {exc}", file=sys.stderr)
        return 2
    store = Store(settings.storage, settings.storage_options, timeout_s=settings.storage_timeout_s)
    marked = asyncio.run(
        mark_dead(store, settings.namespace, settings.cluster, settings.session or None, settings.reason, end_ms)
    )
    print(json.dumps({"marked_dead": [s.session for s in marked]}))
    return 0


def _runner(command: str) -> tuple[type[CommonSettings], Callable[[CommonSettings], int]]:
    if command == "mark-dead":
        return MarkDeadSettings, _mark_dead
    module = importlib.import_module(PARTS[command][0])
    return module.Settings, module.main


def build_parser(command: str | None) -> argparse.ArgumentParser:
    """The parser, with the flags of `command` only (the others' modules stay unimported)."""
    parser = argparse.ArgumentParser(prog="rayhistory", description="Ray History Server for Kubernetes")
    parser.add_argument("--version", action="version", version=f"rayhistory {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (_, help_text) in PARTS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == command:
            add_settings_arguments(p, _runner(name)[0])
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = next((a for a in argv if a in PARTS), None)
    args = build_parser(command).parse_args(argv)
    settings_cls, run = _runner(args.command)
    try:
        settings = settings_from_args(settings_cls, args)
    except Exception as exc:  # pydantic ValidationError: say which setting is wrong, no traceback
        print(f"rayhistory {args.command}: invalid configuration:\n{exc}", file=sys.stderr)
        return 2
    setup_logging(settings.log_level, settings.log_format)
    return int(run(settings) or 0)
