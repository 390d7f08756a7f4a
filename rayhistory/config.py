"""Typed configuration shared by every part.

Every setting is a field of a pydantic-settings model. The same field is reachable three ways, with one
name: the flag ``--storage-options``, the environment variable ``RAYHISTORY_STORAGE_OPTIONS`` and the
field ``storage_options``. Flags win over the environment, which wins over the defaults.
"""

from __future__ import annotations

import argparse
import json
import types
import typing
from typing import Any

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "RAYHISTORY_"
DEFAULT_STORAGE = "file:///var/tmp/rayhistory"


class CommonSettings(BaseSettings):
    """Settings every part takes."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore")

    storage: str = Field(
        DEFAULT_STORAGE,
        description="fsspec URL of the history store: file://, s3://, gs://, abfs:// or oss://",
    )
    storage_options: dict[str, Any] = Field(
        default_factory=dict,
        description="JSON object of extra fsspec options (endpoint_url, ...). Credentials belong in the "
        "environment or mounted files, never here in a manifest.",
    )
    storage_timeout_s: float = Field(
        30.0, gt=0, description="seconds any one storage call may take, overall; past it the caller gets a "
        "storage timeout (the backend call may still finish in its thread) and the stall shows in metrics",
    )
    log_level: str = Field("INFO", description="log level: DEBUG, INFO, WARNING, ERROR")
    log_format: str = Field("json", description="log format: json (one object per line) or text")


def env_name(field: str) -> str:
    return ENV_PREFIX + field.upper()


def flag_name(field: str) -> str:
    return "--" + field.replace("_", "-")


def _is_bool(annotation: Any) -> bool:
    return annotation is bool


def _is_mapping(annotation: Any) -> bool:
    origin = typing.get_origin(annotation) or annotation
    if origin in (typing.Union, types.UnionType):
        return any(_is_mapping(a) for a in typing.get_args(annotation) if a is not type(None))
    return origin in (dict, list)


def add_settings_arguments(parser: argparse.ArgumentParser, model: type[BaseSettings]) -> None:
    """One flag per field; unset flags stay out of the namespace so the environment still applies."""
    for name, field in model.model_fields.items():
        default = "required" if field.is_required() else f"default {field.get_default(call_default_factory=True)!r}"
        help_text = f"{field.description or ''} [env {env_name(name)}; {default}]"
        if _is_bool(field.annotation):
            parser.add_argument(
                flag_name(name), dest=name, action=argparse.BooleanOptionalAction,
                default=argparse.SUPPRESS, help=help_text,
            )
        elif _is_mapping(field.annotation):
            parser.add_argument(
                flag_name(name), dest=name, type=json.loads, default=argparse.SUPPRESS,
                metavar="JSON", help=help_text,
            )
        else:
            parser.add_argument(
                flag_name(name), dest=name, default=argparse.SUPPRESS,
                metavar=name.upper(), help=help_text,
            )


def settings_from_args(model: type[BaseSettings], args: argparse.Namespace) -> BaseSettings:
    explicit = {k: v for k, v in vars(args).items() if k in model.model_fields}
    return model(**explicit)
