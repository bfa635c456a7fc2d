"""`emovlm-kd ablate`: head depth, alpha, temperature and gate variant swept on cached tensors.

Each setting trains a head and a gate in seconds (the features are cached); the run's own
artifacts are left as they are. Writes ablations.json, ablations.md and ablations.png to
--out (default RUN/ablations).
"""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers, help_text: str) -> None:
    parser = subparsers.add_parser(
        "ablate",
        help=help_text,
        description=help_text + ". Without any axis given, the paper's four ablations are run, each "
        "axis varied alone around the run's own settings.",
    )
    parser.add_argument("--run", required=True, help="a trained run folder")
    parser.add_argument("--depth", metavar="1,2,...", help="head depths (1-5)")
    parser.add_argument("--alpha", metavar="0.25,0.5,...", help="distillation weights alpha (0-1)")
    parser.add_argument("--temperature", metavar="1,2,...", help="distillation temperatures (> 0)")
    parser.add_argument("--gate", metavar="concat_linear,...", help="gate variants")
    parser.add_argument("--grid", action="store_true", help="try every combination instead of one axis at a time")
    parser.add_argument("--out", help="output folder (default: RUN/ablations)")
    parser.set_defaults(func=execute)


def parse_values(axis: str, text: str) -> list:
    from emovlm_kd.errors import UserError
    from emovlm_kd.models.configs import GATE_VARIANTS, HIDDEN_WIDTHS

    items = [item.strip() for item in text.split(",") if item.strip()]
    try:
        if axis == "gate":
            values = items
            bad = [v for v in values if v not in GATE_VARIANTS]
            allowed = f"one of {', '.join(GATE_VARIANTS)}"
        elif axis == "depth":
            values = [int(item) for item in items]
            bad = [v for v in values if not 1 <= v <= len(HIDDEN_WIDTHS)]
            allowed = f"whole numbers from 1 to {len(HIDDEN_WIDTHS)}"
        else:
            values = [float(item) for item in items]
            bad = [v for v in values if not (0 <= v <= 1 if axis == "alpha" else v > 0)]
            allowed = "numbers from 0 to 1" if axis == "alpha" else "positive numbers"
    except ValueError:
        raise UserError(
            f"--{axis} {text!r} is not a comma-separated list of numbers, e.g. --{axis} 1,2.", exit_code=2
        ) from None
    if not values or bad:
        raise UserError(f"--{axis} takes {allowed}, comma-separated; got {text!r}.", exit_code=2)
    return values


def execute(args: argparse.Namespace) -> int:
    from emovlm_kd.analysis.ablation import AXES, DEFAULT_VALUES, ablate, plan, run_settings
    from emovlm_kd.apps.report import plots
    from emovlm_kd.apps.report.document import Figure, Text, to_markdown, to_text
    from emovlm_kd.apps.report.tables import ablation_table
    from emovlm_kd.io import atomic_path, atomic_write_text, check_writable, write_json
    from emovlm_kd.run_folder import RunFolder

    plots.require_matplotlib()
    trained = RunFolder.open(args.run)
    out = Path(args.out) if args.out else trained.directory / "ablations"
    check_writable(out, folder=True)
    given = {axis: parse_values(axis, getattr(args, axis)) for axis in AXES if getattr(args, axis)}
    values = given or DEFAULT_VALUES
    base = run_settings(trained)
    rows = ablate(trained, plan(base, values, grid=args.grid))

    swept = ["grid"] if args.grid else [axis for axis in AXES if axis in values]
    table = ablation_table(rows)
    chart = plots.ablation_chart(rows, swept)
    notes = [
        f"Head trained on train with the run's distill settings (epochs {trained.config.distill.epochs}, "
        f"lr {trained.config.distill.lr}), gate on the {trained.config.gate.split} split; seed {trained.config.seed}. "
        "'(run)' marks the run's own settings.",
    ]
    if trained.config.gate.split == "val":
        notes.append("The gate learns on val, so EmoVLM-KD's val accuracy is optimistic; read its test column.")
    write_json(
        out / "ablations.json",
        {"run": str(trained.directory), "base": base, "values": values, "grid": args.grid, "rows": rows},
    )
    blocks = [Text(note) for note in notes] + [table]
    with atomic_path(out / "ablations.png") as tmp:
        tmp.write_bytes(chart)
    blocks.append(Figure("ablations", "Test accuracy against each swept setting (dotted: the run's own).", chart))
    atomic_write_text(out / "ablations.md", to_markdown(f"Ablations of {trained.directory.name}", blocks))

    print(to_text(table))
    for path in sorted(out.glob("ablations.*")):
        print(f"wrote {path}")
    return 0
