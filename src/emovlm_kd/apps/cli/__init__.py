"""The `emovlm-kd` command line: one module per command group, each registering its parsers."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from emovlm_kd import __version__
from emovlm_kd.errors import UserError

# (module, one-line help); each module has `register(subparsers, help)`.
COMMAND_GROUPS = [
    ("data", "inspect datasets and build the offline sample dataset"),
    ("annotate", "generate instruction data (key elements, reasoning) with a multimodal model"),
    ("train", "run the training stages (teacher, instruct, distill, gate) from a config"),
    ("predict", "predict the emotion of image files or folders with a trained run"),
    ("evaluate", "score a trained run on a split: metrics, predictions, report with plots, efficiency"),
    ("compare", "print a metrics file's accuracy beside the paper's numbers for its dataset"),
    ("ablate", "sweep head depth, alpha, temperature and gate variant on a run's cached features"),
    ("serve", "serve a trained run over HTTP: classify API, OpenAI-compatible chat, web page"),
    ("export", "write a finished run as one folder to share (tuned VLM, head, gate, labels, config, model card)"),
    ("bench", "benchmark inference and stage 2+3 training against the reference pipeline"),
    ("presets", "list the model presets and the dataset presets"),
    ("demo", "build the sample dataset and run every stage on the offline presets"),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="emovlm-kd",
        description="Visual emotion analysis with EmoVLM-KD (a VLM fused with a distilled head).",
    )
    parser.add_argument("--version", action="version", version=f"emovlm-kd {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    import importlib

    for name, help_text in COMMAND_GROUPS:
        module = importlib.import_module(f"emovlm_kd.apps.cli.{name}_cmd")
        module.register(subparsers, help_text)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    # Under a launcher only rank 0 reports progress; the others speak up on problems only.
    quiet_rank = int(os.environ.get("RANK", "0")) != 0
    logging.basicConfig(
        level=logging.WARNING if quiet_rank else logging.DEBUG if args.verbose else logging.INFO,
        format="%(message)s",
    )
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        return int(args.func(args) or 0)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    except BrokenPipeError:
        # The reader went away (`emovlm-kd predict ... | head`): stop quietly, as Python's
        # documentation advises, without a second error when the interpreter flushes stdout.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except OSError as error:
        # A file the command could not read or write (a full disk, a path made unusable while
        # it ran): one sentence, not a traceback. Anything else, or with -v, is shown whole.
        if error.filename is None or args.verbose:
            raise
        print(f"error: {error.strerror or error}: {error.filename}; what was finished is kept: fix that, then rerun "
              "the same command (training, predict --out and annotate resume; -v shows where it happened).",
              file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; finished work is kept, rerun the same command to resume.", file=sys.stderr)
        return 130
