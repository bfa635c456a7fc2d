"""Command-line flags built from a config dataclass: one `--name` per field, with the field's
type, default and help, so a setting is written once (in its config) and the flags follow."""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing


def comma_separated(kind: type):
    """An argparse type for `1,4,8`-style lists, as a tuple of `kind`."""

    def parse(text: str) -> tuple:
        try:
            return tuple(kind(part) for part in text.split(","))
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of {kind.__name__} values") from None

    return parse


def _flag_kind(annotation):
    """What a flag parses with: X for `X | None`, a comma-separated list for `tuple[X, ...]`,
    the annotation itself otherwise."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return next(option for option in typing.get_args(annotation) if option is not type(None))
    if typing.get_origin(annotation) is tuple:
        return comma_separated(typing.get_args(annotation)[0])
    return annotation


def add_config_flags(parser: argparse.ArgumentParser, config_class: type) -> None:
    """A flag for every field of `config_class` whose metadata has a "help" text.

    Metadata may also give `choices` and `metavar`.
    """
    hints = typing.get_type_hints(config_class)
    for setting in dataclasses.fields(config_class):
        if "help" not in setting.metadata:
            continue
        kind = _flag_kind(hints[setting.name])
        default = setting.default if setting.default is not dataclasses.MISSING else setting.default_factory()
        flag = "--" + setting.name.replace("_", "-")
        if kind is bool:
            parser.add_argument(flag, dest=setting.name, action="store_true", help=setting.metadata["help"])
            continue
        shown = "" if default is None else f" (default: {_shown(default)})"
        options = {key: setting.metadata[key] for key in ("choices", "metavar") if key in setting.metadata}
        parser.add_argument(flag, dest=setting.name, type=kind, default=default,
                            help=setting.metadata["help"] + shown, **options)


def config_from_flags(config_class: type, args: argparse.Namespace, **settings):
    """`config_class` from the parsed flags (fields without a flag keep their defaults), with
    `settings` on top."""
    flags = {setting.name: getattr(args, setting.name) for setting in dataclasses.fields(config_class)
             if "help" in setting.metadata}
    return config_class(**{**flags, **settings})


def _shown(default) -> str:
    return ",".join(map(str, default)) if isinstance(default, tuple) else str(default)
