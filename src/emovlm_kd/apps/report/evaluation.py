"""The evaluation report: what `emovlm-kd evaluate` writes as report.html and report.md."""

from __future__ import annotations

from emovlm_kd.analysis.evaluation import MODELS
from emovlm_kd.apps.report import plots, tables
from emovlm_kd.apps.report.document import Block, Figure, Heading, Table, Text, percent
from emovlm_kd.apps.report.tables import MODEL_TITLES, gap_in_words
from emovlm_kd.models.published_configs import PAPER_TEACHER_NAME, PAPER_VLM_NAME


def summary_table(metrics: dict) -> Table:
    return Table(
        ["model", "accuracy", "95% interval", "macro-F1", "95% interval", "ECE"],
        [
            [
                MODEL_TITLES[m],
                percent(metrics[m]["accuracy"]),
                interval(metrics[m]["ci95"]["accuracy"]),
                percent(metrics[m]["macro_f1"]),
                interval(metrics[m]["ci95"]["macro_f1"]),
                f"{metrics[m]['ece']:.3f}",
            ]
            for m in MODELS
        ],
    )


def interval(bounds: list[float]) -> str:
    return f"{100 * bounds[0]:.1f} to {100 * bounds[1]:.1f}%"


def paired_table(metrics: dict) -> Table:
    rows = []
    for other in ("vlm", "head"):
        for metric, title in (("accuracy", "accuracy"), ("macro_f1", "macro-F1")):
            paired = metrics["paired"][f"emovlm_kd_minus_{other}"][metric]
            low, high = paired["ci95"]
            rows.append([
                f"EmoVLM-KD minus {MODEL_TITLES[other]}", title, f"{100 * paired['difference']:+.1f}",
                f"{100 * low:+.1f} to {100 * high:+.1f}", f"{paired['p_not_better']:.3f}",
            ])
    return Table(["comparison", "metric", "difference (points)", "paired 95% interval", "share of resamples not better"],
                 rows)


def complementarity_table(pair: dict) -> Table:
    first, second = MODEL_TITLES[pair["first"]], MODEL_TITLES[pair["second"]]
    names = plots.cell_names(pair)
    rows = [
        [names[cell], str(pair["counts"][cell]), percent(pair["fractions"][cell]), str(pair["fused_right"][cell])]
        for cell in names
    ]
    rows += [
        [
            f"better single model ({first if pair['first_accuracy'] >= pair['second_accuracy'] else second})",
            "",
            percent(pair["best_single"]),
            "",
        ],
        ["oracle (either right)", "", percent(pair["oracle"]), ""],
        ["EmoVLM-KD (gated)", "", percent(pair["fused_accuracy"]), ""],
        ["share of the gap to the oracle recovered", "", gap_in_words(pair), ""],
    ]
    return Table(["images", "count", "share", "EmoVLM-KD right"], rows)


def per_class_table(metrics: dict) -> Table:
    header = ["class", "images"] + [f"{MODEL_TITLES[m]} P / R" for m in MODELS]
    rows = []
    for label in metrics["labels"]:
        scores = [metrics[m]["per_class"][label] for m in MODELS]
        rows.append(
            [label, str(scores[0]["support"])]
            + [f"{100 * s['precision']:.0f} / {100 * s['recall']:.0f}" for s in scores]
        )
    return Table(header, rows)


def efficiency_blocks(efficiency: dict) -> list[Block]:
    paper = efficiency["paper_scale"]
    measured = efficiency["measured"]
    blocks: list[Block] = [
        Heading("Efficiency"),
        Heading("At the paper's scale (no weights loaded)", 3),
        Text(
            f"{PAPER_VLM_NAME} and {PAPER_TEACHER_NAME} built from their published configs on the "
            "meta device: exact parameter counts, analytic FLOPs."
        ),
        Table(tables.PAPER_SCALE_HEADER, tables.paper_scale_rows(paper)),
    ]
    blocks += [Text(note) for note in tables.paper_scale_notes(paper)]
    blocks += [
        Heading("Measured on this run's models", 3),
        Text(
            f"Preset {measured['preset']} on {measured['device']} ({measured['threads']} threads), batch 1, median "
            f"over {measured['images']} test images after a warm-up; activations: {measured['memory_method']}. "
            "The VLM and teacher row runs both models one after the other, as deploying both would."
        ),
        Table(tables.MEASURED_HEADER, tables.measured_rows(measured)),
    ]
    return blocks


def evaluation_blocks(metrics: dict, stages: dict[str, dict], efficiency: dict | None = None) -> list[Block]:
    """Every section of the report, figures drawn (needs matplotlib)."""
    dataset = f"dataset {metrics['dataset']}" if metrics.get("dataset") else "no dataset preset"
    blocks: list[Block] = [
        Text(
            f"{metrics['split']} split of {metrics['data_root']} ({dataset}, taxonomy {metrics['taxonomy']}, "
            f"models of the {metrics['preset']!r} preset), "
            f"{metrics['images']} images. Probabilities: the teacher's and the head's softmax, the VLM's exact label "
            "likelihoods normalised over the labels, the gate's softmax."
        ),
    ]
    if metrics["gate_saw_these_images"]:
        blocks.append(
            Text(
                f"Caution: the gate was trained on the {metrics['gate_trained_on']} split, which these images "
                "include, so the EmoVLM-KD numbers are optimistic."
            )
        )
    blocks += [
        Heading("Scores"),
        Text("Intervals: 95% percentile bootstrap over the images (2,000 resamples)."),
        summary_table(metrics),
        Heading("Is the fusion better?", 3),
        Text("Paired bootstrap: each resample of the images scores both models, so the interval is that of the "
             "difference itself. An interval above 0 means the fused model is better on data like this."),
        paired_table(metrics),
        Figure(
            "confusion",
            "Confusion matrices (rows: true class; colour: share of the row).",
            plots.confusion_matrices(metrics),
        ),
        Heading("Complementarity"),
        Text(
            "Where the VLM and the teacher are right (the paper's motivation), and where the VLM and the distilled "
            "head are right (the two inputs the gate fuses). The oracle picks whichever is right; the last row is "
            "how much of the distance from the better single model to the oracle the gate closes."
        ),
    ]
    for pair in metrics["complementarity"].values():
        blocks += [
            Heading(f"{MODEL_TITLES[pair['first']]} and {MODEL_TITLES[pair['second']]}", 3),
            complementarity_table(pair),
        ]
    blocks += [
        Figure(
            "complementarity",
            "Complementarity: shares of images by which model is right.",
            plots.complementarity_chart(metrics),
        ),
        Heading("Per class"),
        per_class_table(metrics),
        Figure("per_class", "Precision and recall per class.", plots.per_class_bars(metrics)),
        Heading("Calibration"),
        Text("Expected calibration error over 15 equal-width bins of top-1 confidence."),
        Figure("reliability", "Reliability diagrams.", plots.reliability_diagram(metrics)),
        Heading("Training"),
        Figure(
            "training",
            "Training loss of every stage (distill and gate: training accuracy dashed).",
            plots.training_curves(stages),
        ),
    ]
    if efficiency:
        blocks += efficiency_blocks(efficiency)
    return blocks
