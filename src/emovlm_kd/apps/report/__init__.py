"""Reports of a run: HTML (self-contained) and Markdown, with figures.

- `document.py`    blocks (headings, text, tables, figures) and their HTML / Markdown renderings
- `plots.py`       the figures, drawn with matplotlib (the `plot` extra, imported lazily)
- `evaluation.py`  the sections of the evaluation report (`emovlm-kd evaluate`)
- `tables.py`      every table and line of figures the commands print (scores, cost, benchmark, ...)

The numbers come from the library (`emovlm_kd.analysis`, `emovlm_kd.metrics`) and the
benchmark (`emovlm_kd.apps.bench.figures`); this package only lays them out.
"""
