"""Command-line flags built from a config dataclass: one `--name` per field, with the field's
type, default and help, so a setting is written once (in its config) and the flags follow."""

from __future__ import annotations

import argparse
import dataclasses
import sys
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


DTYPE_HELP = ("precision of the VLM: auto (bf16 on a GPU, float32 on a CPU), float32, or bfloat16 (on a CPU with "
              "AVX512-BF16 or AMX about twice as fast as float32, with probabilities a few hundredths apart)")


def add_dtype_flag(parser: argparse.ArgumentParser) -> None:
    # The names of registry.INFERENCE_DTYPES, spelt out so that building the parser imports no torch.
    parser.add_argument("--dtype", choices=("auto", "float32", "bfloat16"), default="auto", help=DTYPE_HELP)


def inference_dtype(name: str):
    """The torch dtype of a `--dtype` choice (None: the default), with a note on stderr where
    bf16 would run emulated on this CPU."""
    from emovlm_kd import distributed
    from emovlm_kd.models.registry import INFERENCE_DTYPES, native_cpu_bf16

    dtype = INFERENCE_DTYPES[name]
    if name == "bfloat16" and distributed.device().type == "cpu" and not native_cpu_bf16():
        print("note: this CPU has no bf16 instructions (AVX512-BF16 or AMX), so --dtype bfloat16 runs emulated, "
              "slower than float32.", file=sys.stderr)
    return dtype
