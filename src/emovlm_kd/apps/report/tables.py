"""Tables and text of the figures the library computes: evaluation scores, cost at the
paper's scale, measured deployments, the benchmark, preset sizes, the paper comparison and
ablations. Layout only: every number comes from `emovlm_kd.analysis` or `emovlm_kd.apps.bench`.
"""

from __future__ import annotations

from emovlm_kd.apps.report.document import Table, to_text


def format_count(count: int | None) -> str:
    """8291375616 -> '8.29B', 3679240 -> '3.68M', 136 -> '136'; None -> 'unknown'."""
    if count is None:
        return "unknown"
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if count >= size:
            return f"{count / size:.2f}{unit}"
    return str(count)


def format_share(share: float) -> str:
    """1.0104 -> '101.04%', 0.000444 -> '0.04437%', 1.6e-8 -> '1.6e-06%'."""
    percent = 100 * share
    if percent >= 1:
        return f"{percent:.2f}%"
    return f"{percent:.4g}%" if percent >= 1e-3 else f"{percent:.1e}%"


PAPER_SCALE_HEADER = ["model", "parameters", "of the VLM", "GFLOPs / image"]


def paper_scale_rows(table: dict) -> list[list[str]]:
    """The table as text cells: model, parameters, share of the VLM, GFLOPs per image."""
    return [
        [
            ("  of which: " if row["part_of"] else "") + row["name"],
            f"{format_count(row['parameters'])} ({row['parameters']:,})",
            format_share(row["share_of_vlm"]),
            f"{row['gflops']:,.2f}",
        ]
        for row in table["rows"]
    ]


def paper_scale_notes(table: dict) -> list[str]:
    """The assumptions and the remarks that belong under the table, as sentences."""
    workload = table["workload"]
    saved = table["saved_vs_deploying_both"]
    both = next(row for row in table["rows"] if row["key"] == "vlm_and_teacher")
    return [
        f"FLOPs per image for a {workload['image_size']}x{workload['image_size']} image "
        f"({table['image_tokens']} visual tokens), a {workload['prompt_tokens']}-token prompt and "
        f"{workload['num_labels']} answers scored exactly in one pass; FLOPs = 2 x multiply-accumulates "
        "of linear and convolution layers plus dense attention; norms and activations left out.",
        f"The depth-{table['head_depth']} head is {100 * table['head_share_of_vlm']:.3f}% of the VLM's parameters; "
        f"the paper's {100 * table['paper_head_share']:.3f}% does not match a head with a 1024-wide hidden layer "
        f"on the {table['visual_width']}-dim visual tokens.",
        f"Against deploying the VLM and the ViT together, EmoVLM-KD saves {saved['parameters'] / 1e6:.1f}M parameters "
        f"({100 * saved['parameters'] / both['parameters']:.2f}%) and {saved['gflops']:.1f} GFLOPs per image "
        f"({100 * saved['gflops'] / both['gflops']:.2f}%).",
    ]


MEASURED_TITLES = {"vlm": "VLM alone", "vlm_and_teacher": "VLM + teacher together", "emovlm_kd": "EmoVLM-KD"}

MEASURED_HEADER = ["deployment", "parameters", "weights MiB", "activations MiB", "peak MiB", "latency ms / image"]


def measured_rows(measured: dict) -> list[list[str]]:
    rows = []
    for name, row in measured["deployments"].items():
        rows.append(
            [
                MEASURED_TITLES[name],
                format_count(row["parameters"]),
                f"{row['weights_mib']:.1f}",
                f"{row['activations_mib']:.1f}",
                f"{row['weights_mib'] + row['activations_mib']:.1f}",
                f"{row['latency_ms']:.1f}",
            ]
        )
    return rows


def format_efficiency(efficiency: dict) -> str:
    """The paper-scale table, its notes and the measured table, as printed by `evaluate --efficiency`."""
    lines = [to_text(Table(PAPER_SCALE_HEADER, paper_scale_rows(efficiency["paper_scale"])))]
    lines += paper_scale_notes(efficiency["paper_scale"])
    lines.append(to_text(Table(MEASURED_HEADER, measured_rows(efficiency["measured"]))))
    return "\n".join(lines)
