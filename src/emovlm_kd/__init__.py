"""EmoVLM-KD: a vision-language model fused with a head distilled from a vision classifier.

The library (labels, data, models, losses, stages) lives here; the apps (CLI, server,
benchmark) live in `emovlm_kd.apps` and only call into it.
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    # Lazy so that `import emovlm_kd` stays cheap (no torch import) for the CLI's --help.
    if name == "EmoVLMKD":
        from emovlm_kd.pipeline import EmoVLMKD

        return EmoVLMKD
    raise AttributeError(name)
