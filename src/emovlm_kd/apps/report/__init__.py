"""Reports of a run: HTML (self-contained) and Markdown, with figures.

- `document.py`    blocks (headings, text, tables, figures) and their HTML / Markdown renderings
- `plots.py`       the figures, drawn with matplotlib (the `plot` extra, imported lazily)
- `evaluation.py`  the sections of the evaluation report (`emovlm-kd evaluate`)

The numbers come from the library (`emovlm_kd.evaluation`, `emovlm_kd.metrics`,
`emovlm_kd.efficiency`, `emovlm_kd.ablation`); this package only lays them out.
"""
