"""`emovlm-kd annotate`: instruction data for the training images, or `--check` an annotation file."""

from __future__ import annotations

import argparse
import logging
import sys

from emovlm_kd.annotate.config import AnnotateConfig
from emovlm_kd.apps.cli.flags import add_config_flags, config_from_flags
from emovlm_kd.errors import UserError

# How many failures are named one by one before the rest are only counted.
_NAMED_FAILURES = 20


def register(subparsers, help_text: str) -> None:
    parser = subparsers.add_parser(
        "annotate",
        help=help_text,
        description=f"{help_text}. Records are appended as they arrive; rerun the same command to resume.",
    )
    parser.add_argument(
        "--check", nargs="?", const="", metavar="FILE",
        help="summarise an annotation file (default: --out): records, flagged by reason, per label; sends no request",
    )
    # Every setting of AnnotateConfig is a flag: --base-url, --max-retries, --retry-flagged, ...
    add_config_flags(parser, AnnotateConfig)
    parser.set_defaults(func=execute)


def execute(args: argparse.Namespace) -> int:
    if args.check is not None:
        from emovlm_kd.annotate.summary import summarise_annotations
        from emovlm_kd.apps.report.summaries import format_annotation_summary

        if not (args.check or args.out):
            raise UserError("--check needs the annotation file: --check FILE, or --out FILE.", exit_code=2)
        print(format_annotation_summary(summarise_annotations(args.check or args.out, taxonomy=args.taxonomy)))
        return 0

    from emovlm_kd.annotate.runner import annotate_dataset
    from emovlm_kd.apps.report.summaries import format_answer_modes

    if not args.verbose:
        # The HTTP client logs every request at INFO; one line per image drowns the summary.
        for name in ("httpx", "httpx2"):
            logging.getLogger(name).setLevel(logging.WARNING)

    config = config_from_flags(AnnotateConfig, args)
    report = annotate_dataset(config)
    print(
        f"{report.out}: {report.written} record(s) written ({report.flagged} flagged), "
        f"{report.already_done} already there, of {report.images} training images"
    )
    if config.retry_flagged:
        print(f"{report.retried} flagged record(s) asked again; the file keeps the newest record of each image")
    if report.written:
        print(format_answer_modes(report.modes))
    if report.complete:
        print(f"summary: emovlm-kd annotate --check {report.out}")
        return 0
    for failure in report.failures[:_NAMED_FAILURES]:
        print(f"failed: {failure.image}: {failure.reason}", file=sys.stderr)
    if len(report.failures) > _NAMED_FAILURES:
        print(f"... and {len(report.failures) - _NAMED_FAILURES} more failed image(s)", file=sys.stderr)
    if report.not_attempted:
        print(f"{report.not_attempted} image(s) not attempted after too many failures in a row", file=sys.stderr)
    raise UserError(
        f"{len(report.failures) + report.not_attempted} image(s) are not annotated yet; "
        "fix the cause above and rerun the same command to do only those."
    )
