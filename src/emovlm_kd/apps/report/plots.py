"""The report's figures, each a function from metrics to PNG bytes.

matplotlib (the `plot` extra) is imported inside `_figure`, so the rest of the package never
needs it; figures are drawn on an Agg canvas of their own, leaving pyplot's state alone.
"""

from __future__ import annotations

import importlib.util
import io

from emovlm_kd.analysis.evaluation import MODELS
from emovlm_kd.apps.report.tables import MODEL_TITLES
from emovlm_kd.errors import UserError

MODEL_COLOURS = {"teacher": "#d98c2b", "vlm": "#3a6ea5", "head": "#8a5fb0", "emovlm_kd": "#2e8b57"}
CELL_COLOURS = {
    "both_right": "#2e8b57",
    "only_first_right": "#3a6ea5",
    "only_second_right": "#d98c2b",
    "both_wrong": "#b0b0b0",
}
DPI = 100


def require_matplotlib() -> None:
    """Fail early, in one sentence, where the `plot` extra is not installed."""
    if importlib.util.find_spec("matplotlib") is None:
        raise UserError(
            "the plots need matplotlib; install it with pip install 'emovlm-kd[plot]' "
            "(evaluate also runs without plots with --no-report)."
        )


def _figure(width: float, height: float):
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def confusion_matrices(metrics: dict) -> bytes:
    """One panel per model: rows are true classes, colour is the row share, text the count."""
    labels = metrics["labels"]
    size = max(3.2, 0.45 * len(labels) + 1.6)
    figure = _figure(size * len(MODELS), size + 0.4)
    for axes, model in zip(figure.subplots(1, len(MODELS)), MODELS):
        counts = metrics[model]["confusion_matrix"]
        shares = [[count / max(sum(row), 1) for count in row] for row in counts]
        axes.imshow(shares, cmap="Blues", vmin=0, vmax=1)
        for t, row in enumerate(counts):
            for p, count in enumerate(row):
                colour = "white" if shares[t][p] > 0.6 else "black"
                axes.text(p, t, str(count), ha="center", va="center", fontsize=8, color=colour)
        axes.set_xticks(range(len(labels)), labels, rotation=60, ha="right", fontsize=8)
        axes.set_yticks(range(len(labels)), labels, fontsize=8)
        axes.set_xlabel("predicted")
        axes.set_ylabel("true")
        axes.set_title(f"{MODEL_TITLES[model]}\naccuracy {100 * metrics[model]['accuracy']:.1f}%", fontsize=10)
    return _png(figure)


def reliability_diagram(metrics: dict) -> bytes:
    """Accuracy against confidence per bin, one panel per model, the gap to the diagonal shaded."""
    figure = _figure(3.4 * len(MODELS), 3.6)
    for axes, model in zip(figure.subplots(1, len(MODELS), sharey=True), MODELS):
        bins = [row for row in metrics[model]["reliability"] if row["count"]]
        width = bins[0]["upper"] - bins[0]["lower"] if bins else 0.1
        centres = [(row["lower"] + row["upper"]) / 2 for row in bins]
        axes.bar(
            centres, [row["accuracy"] for row in bins], width=width * 0.95, color=MODEL_COLOURS[model], label="accuracy"
        )
        axes.bar(
            centres,
            [row["confidence"] - row["accuracy"] for row in bins],
            bottom=[row["accuracy"] for row in bins],
            width=width * 0.95,
            color="#e05050",
            alpha=0.35,
            label="gap to confidence",
        )
        axes.plot([0, 1], [0, 1], color="black", linestyle="--", linewidth=1)
        axes.set_xlim(0, 1)
        axes.set_ylim(0, 1)
        axes.set_xlabel("confidence (top-1 probability)")
        axes.set_title(f"{MODEL_TITLES[model]}\nECE {metrics[model]['ece']:.3f}", fontsize=10)
    figure.axes[0].set_ylabel("accuracy")
    figure.axes[0].legend(loc="upper left", fontsize=8)
    return _png(figure)


def per_class_bars(metrics: dict) -> bytes:
    """Precision and recall of each class, the four models side by side."""
    labels = metrics["labels"]
    figure = _figure(max(7.0, 1.1 * len(labels) + 2), 6.0)
    width = 0.8 / len(MODELS)
    for axes, score in zip(figure.subplots(2, 1, sharex=True), ("precision", "recall")):
        for offset, model in enumerate(MODELS):
            values = [metrics[model]["per_class"][label][score] for label in labels]
            positions = [k + (offset - (len(MODELS) - 1) / 2) * width for k in range(len(labels))]
            axes.bar(positions, values, width=width, color=MODEL_COLOURS[model], label=MODEL_TITLES[model])
        axes.set_ylim(0, 1)
        axes.set_ylabel(score)
        axes.grid(axis="y", alpha=0.3)
    figure.axes[-1].set_xticks(range(len(labels)), labels, rotation=30, ha="right")
    figure.axes[0].legend(ncols=len(MODELS), fontsize=8, loc="upper center", bbox_to_anchor=(0.5, 1.25))
    return _png(figure)


def _trainer_curve(stage_metrics: dict) -> tuple[list[float], list[float]]:
    # Trainer logs: one entry per logging step with 'loss', plus a final summary without it.
    logged = [entry for entry in stage_metrics.get("log_history", []) if "loss" in entry]
    return [entry.get("epoch", entry.get("step", 0)) for entry in logged], [entry["loss"] for entry in logged]


def training_curves(stages: dict[str, dict]) -> bytes:
    """Training loss per stage (teacher and instruct from the Trainer's log, distill and gate
    per epoch with their training accuracy)."""
    figure = _figure(13, 3.4)
    for axes, stage in zip(figure.subplots(1, 4), ("teacher", "instruct", "distill", "gate")):
        axes.set_title(stage, fontsize=10)
        axes.set_xlabel("epoch")
        recorded = stages.get(stage) or {}
        if "history" in recorded:
            epochs = [entry["epoch"] for entry in recorded["history"]]
            axes.plot(epochs, [entry["loss"] for entry in recorded["history"]], color="#3a6ea5", marker=".")
            accuracy_axes = axes.twinx()
            accuracy_axes.plot(
                epochs, [entry["train_accuracy"] for entry in recorded["history"]], color="#2e8b57", linestyle="--"
            )
            accuracy_axes.set_ylim(0, 1)
            accuracy_axes.set_ylabel("train accuracy (dashed)", fontsize=8)
        else:
            epochs, losses = _trainer_curve(recorded)
            if losses:
                axes.plot(epochs, losses, color="#3a6ea5", marker=".")
            else:
                why = "stage not run" if not recorded else "no loss logged\n(fewer steps than\nlogging_steps)"
                axes.text(0.5, 0.5, why, ha="center", va="center", transform=axes.transAxes, color="#777777")
        axes.set_ylabel("training loss", fontsize=8)
    return _png(figure)


def cell_names(pair: dict) -> dict[str, str]:
    """How each cell of a complementarity table reads, e.g. 'only VLM alone right'."""
    first, second = MODEL_TITLES[pair["first"]], MODEL_TITLES[pair["second"]]
    return {
        "both_right": "both right",
        "only_first_right": f"only {first} right",
        "only_second_right": f"only {second} right",
        "both_wrong": "both wrong",
    }


def complementarity_chart(metrics: dict) -> bytes:
    """For each pair: the share of images both get right, only one, neither; with the oracle
    (either right) and EmoVLM-KD's accuracy marked."""
    pairs = list(metrics["complementarity"].values())
    figure = _figure(9, 1.1 + 0.9 * len(pairs))
    axes = figure.subplots()
    for row, pair in enumerate(pairs):
        names = cell_names(pair)
        left = 0.0
        for cell, share in pair["fractions"].items():
            axes.barh(
                row,
                share,
                left=left,
                color=CELL_COLOURS[cell],
                edgecolor="white",
                label=names[cell] if row == 0 else None,
            )
            if share >= 0.06:
                axes.text(
                    left + share / 2, row, f"{100 * share:.0f}%", ha="center", va="center", color="white", fontsize=8
                )
            left += share
        axes.plot([pair["oracle"]] * 2, [row - 0.45, row + 0.45], color="black", linewidth=2)
        axes.plot(pair["fused_accuracy"], row, marker="D", color="black", markersize=7)
    axes.set_yticks(range(len(pairs)), [f"{MODEL_TITLES[p['first']]} / {MODEL_TITLES[p['second']]}" for p in pairs])
    axes.set_xlim(0, 1)
    axes.set_xlabel("share of images   (| oracle: either right,  ◆ EmoVLM-KD accuracy)")
    axes.invert_yaxis()
    axes.legend(ncols=4, fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 1.0))
    return _png(figure)


def ablation_chart(rows: list[dict], swept: list[str]) -> bytes:
    """Head and EmoVLM-KD test accuracy: one panel per axis varied alone, against its value;
    or, for a grid (`swept == ["grid"]`), one panel with a pair of bars per combination."""
    width = 3.6 * len(swept) if swept != ["grid"] else max(6.0, 0.5 * len(rows) + 2)
    figure = _figure(width, 3.8)
    panels = figure.subplots(1, len(swept), squeeze=False)[0]
    for panel, axis in zip(panels, swept):
        own = [row for row in rows if row["axis"] == axis]
        if axis == "grid":
            ticks = [f"d{r['depth']} a{r['alpha']} T{r['temperature']} {r['gate']}" for r in own]
        else:
            ticks = [str(row[axis]) for row in own]
        for offset, (key, model) in enumerate((("head_test", "head"), ("fused_test", "emovlm_kd"))):
            heights = [row[key] for row in own]
            if axis == "grid":
                panel.bar(
                    [i + (offset - 0.5) * 0.4 for i in range(len(own))],
                    heights,
                    width=0.4,
                    color=MODEL_COLOURS[model],
                    label=MODEL_TITLES[model],
                )
            else:
                panel.plot(range(len(own)), heights, marker="o", color=MODEL_COLOURS[model], label=MODEL_TITLES[model])
        for index, row in enumerate(own):
            if row["run_setting"]:
                panel.axvline(index, color="#999999", linestyle=":", linewidth=1)
        slanted = axis in ("gate", "grid")
        panel.set_xticks(
            range(len(own)), ticks, rotation=30 if slanted else 0, ha="right" if slanted else "center", fontsize=8
        )
        panel.set_xlabel("setting" if axis == "grid" else axis)
        panel.set_ylim(0, 1)
        panel.grid(axis="y", alpha=0.3)
    panels[0].set_ylabel("test accuracy")
    panels[0].legend(fontsize=8)
    return _png(figure)
