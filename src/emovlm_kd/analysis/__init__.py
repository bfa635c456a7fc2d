"""Analysis of trained runs: numbers only, laid out as tables and text by `emovlm_kd.apps.report`.

- `evaluation.py`     the four models' probabilities on a split, the metrics file, predictions
- `ablation.py`       head / gate sweeps on cached tensors
- `cost.py`           parameters and FLOPs at the paper's scale (meta device, analytic)
- `measure.py`        measured latency and memory of deployments (`evaluate --efficiency`, `bench`)
- `paper_results.py`  the paper's reported figures, for `compare`
"""
