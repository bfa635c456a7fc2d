"""Tables and text of the figures the library computes: evaluation scores, cost at the
paper's scale, measured deployments, the benchmark, preset sizes, the paper comparison and
ablations. Layout only: every number comes from `emovlm_kd.analysis` or `emovlm_kd.apps.bench.figures`.
"""

from __future__ import annotations

from emovlm_kd.analysis.ablation import AXES
from emovlm_kd.analysis.evaluation import MODELS
from emovlm_kd.apps.report.document import Table, percent, to_text

MODEL_TITLES = {"teacher": "teacher", "vlm": "VLM alone", "head": "head alone", "emovlm_kd": "EmoVLM-KD (gated)"}


# ---- evaluation -----------------------------------------------------------------------


def format_table(metrics: dict) -> str:
    """The scores of a metrics file with their intervals, the paired differences and the
    agreement kept, as `train` and `evaluate` print them and the model card shows them."""
    lines = [
        f"{metrics['split']} split, {metrics['images']} images (95% bootstrap intervals)",
        f"{'model':<20} {'accuracy':>22} {'macro-F1':>22} {'ECE':>7}",
    ]
    for name in MODELS:
        row = metrics[name]
        lines.append(
            f"{MODEL_TITLES[name]:<20} {_with_interval(row['accuracy'], row['ci95']['accuracy']):>22} "
            f"{_with_interval(row['macro_f1'], row['ci95']['macro_f1']):>22} {row['ece']:>7.3f}"
        )
    for other in ("vlm", "head"):
        paired = metrics["paired"][f"emovlm_kd_minus_{other}"]["accuracy"]
        low, high = paired["ci95"]
        lines.append(
            f"EmoVLM-KD minus {MODEL_TITLES[other]}: {100 * paired['difference']:+.1f} points accuracy "
            f"(paired 95% interval {100 * low:+.1f} to {100 * high:+.1f})"
        )
    if "agreement" in metrics:
        agreement = metrics["agreement"]
        lines.append(
            f"head and VLM agree with confidence >= {agreement['confidence']:g} on {agreement['agreeing']} images; "
            f"the fused label is theirs on {agreement['kept']}"
        )
    return "\n".join(lines)


def _with_interval(value: float, interval: list[float]) -> str:
    return f"{100 * value:.1f}% [{100 * interval[0]:.1f}, {100 * interval[1]:.1f}]"


def gap_in_words(pair: dict) -> str:
    """How the fused model stands against the better single model and the oracle, in words:
    a ratio is meaningless where the fusion is below the better model or there is no gap."""
    gap_recovered = pair["gap_recovered"]
    if pair["fused_accuracy"] < pair["best_single"]:
        points = 100 * (pair["best_single"] - pair["fused_accuracy"])
        return f"none: EmoVLM-KD is {points:.1f} points below the better single model"
    if gap_recovered is None:
        return "no gap: the oracle is no better than the better single model"
    return percent(gap_recovered)


def format_complementarity(metrics: dict) -> str:
    """One line per pair of models: where each is right, the oracle and the gap the gate recovers."""
    lines = []
    for pair in metrics["complementarity"].values():
        first, second = MODEL_TITLES[pair["first"]], MODEL_TITLES[pair["second"]]
        fractions = pair["fractions"]
        lines.append(
            f"{first} / {second}: both right {100 * fractions['both_right']:.1f}%, only {first} "
            f"{100 * fractions['only_first_right']:.1f}%, only {second} {100 * fractions['only_second_right']:.1f}%, "
            f"both wrong {100 * fractions['both_wrong']:.1f}%; oracle {100 * pair['oracle']:.1f}%, "
            f"share of the gap the gate recovers: {gap_in_words(pair)}"
        )
    return "\n".join(lines)


def comparison_table(rows: list[dict]) -> Table:
    """Our accuracy beside the paper's, per model (`analysis.paper_results.comparison`)."""
    return Table(
        ["model", "ours", "paper", "difference"],
        [
            [
                MODEL_TITLES[row["model"]],
                f"{row['ours']:.2f}%",
                "—" if row["paper"] is None else f"{row['paper']:.2f}%",
                "" if row["difference"] is None else f"{row['difference']:+.2f}",
            ]
            for row in rows
        ],
    )


def ablation_table(rows: list[dict]) -> Table:
    """One row per setting tried (`analysis.ablation.ablate`): its values and the accuracies."""
    return Table(
        ["varied", *AXES, "head val", "head test", "EmoVLM-KD val", "EmoVLM-KD test"],
        [
            [row["axis"] + (" (run)" if row["run_setting"] else "")]
            + [str(row[axis]) for axis in AXES]
            + [percent(row.get(key), 1) for key in ("head_val", "head_test", "fused_val", "fused_test")]
            for row in rows
        ],
    )


# ---- cost at the paper's scale and measured --------------------------------------------


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
    points = 100 * share
    if points >= 1:
        return f"{points:.2f}%"
    return f"{points:.4g}%" if points >= 1e-3 else f"{points:.1e}%"


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
    """The measured deployments (`analysis.measure.measure_model`) as text cells."""
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


# ---- benchmark --------------------------------------------------------------------------


def format_bench(result: dict) -> str:
    """The benchmark's figures against their targets, one per line."""
    lines = [f"{'figure':<32} {'value':>10}  target"]
    per_repeat = result.get("per_repeat", {})  # absent from files written before it was kept
    for key, target in result["targets"].items():
        spread = per_repeat.get(key, [])
        lines.append(f"{key:<32} {result[key]:>10.2f}  {target['target']} ({'met' if target['met'] else 'NOT met'})"
                     + (f"; median of {len(spread)} repeats, {min(spread):.2f} to {max(spread):.2f}"
                        if len(spread) > 1 else ""))
    lines += _speedup_diagnosis(result) + _noise_lines(result)
    lines.append(f"{'memory_ratio_vs_dual':<32} {result['memory_ratio_vs_dual']:>10.2f}  (reported)")
    lines.append(f"{'head_gate_param_overhead_pct':<32} {result['head_gate_param_overhead_pct']:>10.3f}  (reported)")
    lines.append(f"{'images_per_second (best batch)':<32} {result['images_per_second_best']:>10.2f}  "
                 f"(batch {result['best_batch_size']})")
    ours = {int(key.removeprefix("ours_batch")): seconds for key, seconds in result["seconds_per_image"].items()
            if key.startswith("ours_batch")}
    lines.append(f"{'seconds per image (ours)':<32} " + ", ".join(f"batch {size}: {ours[size]:.3f}" for size in sorted(ours)))
    utilisation = result.get("utilisation", {})
    if "gflops_per_image" in utilisation:
        sizes = sorted(utilisation["achieved_tflops"], key=int)
        lines.append(f"{'model FLOPs':<32} {utilisation['gflops_per_image']:.1f} GFLOPs per image; achieved "
                     + ", ".join(f"batch {size}: {utilisation['achieved_tflops'][size]:.2f}" for size in sizes)
                     + " TFLOP/s")
        if "mfu" in utilisation:
            lines.append(f"{'MFU':<32} " + ", ".join(f"batch {size}: {100 * utilisation['mfu'][size]:.1f}%"
                                                     for size in sizes)
                         + f" of {utilisation['peak_tflops']:g} TFLOP/s ({utilisation['peak_source']})")
    if "predict" in result:
        predict = result["predict"]
        lines.append(f"{'predict (images/s)':<32} predict {predict['predict_images_per_second']:.2f} vs model "
                     f"{predict['model_images_per_second']:.2f}, {predict['workers']} decoding threads, ratio per "
                     "repeat " + ", ".join(f"{ratio:.2f}" for ratio in predict["ratio_per_repeat"]))
    if "serve" in result:
        serve = result["serve"]
        lines.append(f"{'serve (images/s)':<32} server {serve['server_images_per_second']:.2f} vs predict "
                     f"{serve['predict_images_per_second']:.2f}, {serve['clients']} clients, batch {serve['batch_size']} "
                     f"(mean {serve['mean_batch_size']:.1f}), model busy {100 * serve['model_busy']:.0f}%")
    return "\n".join(lines)


def _speedup_diagnosis(result: dict) -> list[str]:
    """Whose a missed inference speed-up is: ours, if our path costs more than one bare forward
    pass (`floor_ratio` missed); else the machine's, whose arithmetic is slow next to what the
    reference spends beyond that pass (decoding, a token at a time)."""
    missed = [key for key in ("inference_speedup_batch1", "inference_speedup_batched")
              if key in result["targets"] and not result["targets"][key]["met"]]
    if not missed:
        return []
    if not result["targets"]["floor_ratio"]["met"]:
        line = (f"  {' and '.join(missed)} missed, and ours costs {result['floor_ratio']:.2f} times one bare forward "
                "pass: our path is slower than it should be; --profile shows where its time goes.")
    else:
        line = (f"  {' and '.join(missed)} missed with ours at the floor ({result['floor_ratio']:.2f} times one bare "
                "forward pass of prompt and image): this machine's arithmetic is slow next to what the reference "
                "spends beyond that pass (decoding, a token at a time); see the README's Performance section.")
    return [line]


def _noise_lines(result: dict) -> list[str]:
    """For each missed target that some of its repeats met: it may be noise (the median
    decides the figure), and more repeats tell."""
    lines = []
    for key, target in result["targets"].items():
        met, spread = target.get("repeats_met", 0), result.get("per_repeat", {}).get(key, [])
        if not target["met"] and met:
            lines.append(f"  {key}: {met} of {len(spread)} repeats met the target; a run with more --repeats "
                         "tells noise from a real shortfall.")
    return lines


def format_profile(profile: dict) -> str:
    """`bench --profile`: one batch's time by part, the attention kernels and the top operators."""
    total = profile["seconds"]
    lines = [f"profile of one batch of {profile['batch_size']} images on {profile['device']} "
             f"({profile['threads']} CPU threads): {total:.3f} s",
             "  " + ", ".join(f"{part} {100 * seconds / total:.0f}%" for part, seconds in profile["split_seconds"].items())]
    for row in profile["attention"]:
        mask = f"{row['mask']} boolean mask" if row["mask"] else "no mask"
        lines.append(f"  attention, {row['tower']}: {row['kernel']} x{row['calls']}, query {row['query']}, {mask}")
    lines.append(f"  top operators by self {profile['self_time']} time:")
    for operator in profile["top_operators"]:
        lines.append(f"    {operator['name'][:50]:<50} {operator['self_ms']:>9.1f} ms {100 * operator['share']:>5.1f}% "
                     f"{operator['calls']:>5} calls")
    return "\n".join(lines)
