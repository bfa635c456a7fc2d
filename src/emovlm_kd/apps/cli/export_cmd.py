"""`emovlm-kd export`: a finished run as one folder to share, optionally uploaded to the Hub."""

from __future__ import annotations

import argparse


def register(subparsers, help_text: str) -> None:
    parser = subparsers.add_parser("export", help=help_text, description=help_text)
    parser.add_argument("--run", required=True, help="a finished run folder")
    parser.add_argument("--out", required=True, help="the new folder to write (it must not exist, or be empty)")
    parser.add_argument("--merge", action="store_true", help="fold a LoRA adapter into the base weights (not for QLoRA runs)")
    parser.add_argument("--base-model", metavar="HUB_ID", help="the hub id of the base VLM, where the run loaded it from a local folder")
    parser.add_argument("--license", metavar="ID", help="the license for the model card's metadata (e.g. apache-2.0)")
    parser.add_argument("--push-to-hub", metavar="REPO", help="then upload the folder to this Hugging Face model repo (e.g. you/emovlm-kd-fi)")
    parser.add_argument("--private", action="store_true", help="with --push-to-hub: create the repo private")
    parser.set_defaults(func=execute)


def execute(args: argparse.Namespace) -> int:
    from emovlm_kd.apps.export import check_hub_id, export_run, push_to_hub
    from emovlm_kd.io import check_writable

    check_writable(args.out, folder=True)
    if args.push_to_hub:
        check_hub_id(args.push_to_hub)
    out = export_run(args.run, args.out, merge=args.merge, base_model=args.base_model, license=args.license,
                     hub_id=args.push_to_hub)
    print(f"exported {args.run} to {out}; load it with EmoVLMKD.from_pretrained({str(out)!r}) or `predict --run {out}`")
    if args.push_to_hub:
        print(f"uploaded to {push_to_hub(out, args.push_to_hub, private=args.private)}")
    return 0
