"""The settings of one annotation run; the command line is built from these fields."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from emovlm_kd.config import setting
from emovlm_kd.errors import UserError
from emovlm_kd.io import check_writable

BACKENDS = ("openai", "local")


@dataclass
class AnnotateConfig:
    """Where the images come from, which model describes them, and how failures are retried.

    Temperature 0 and a fixed jitter seed keep reruns as repeatable as the endpoint allows.
    """

    data: str | None = setting(
        None, "dataset folder, .jsonl/.csv manifest, `datasets` folder or Parquet; its train split is annotated", metavar="ROOT",
    )
    out: str | None = setting(None, "JSONL file of records; appended to, and resumed when it exists", metavar="FILE")
    model: str | None = setting(
        None, "model name at the endpoint, or a VLM preset / hub id / folder with --backend local", metavar="NAME",
    )
    backend: str = setting(
        "openai", "openai: any OpenAI-compatible chat endpoint; local: a VLM through transformers", choices=BACKENDS,
    )
    base_url: str | None = setting(
        None, "endpoint URL, e.g. https://api.openai.com/v1 or http://localhost:11434/v1", metavar="URL",
    )
    api_key_env: str | None = setting(
        None, "environment variable holding the API key (default: OPENAI_API_KEY if set, else no key)", metavar="VAR",
    )
    taxonomy: str | None = setting(None, "label set (default: guessed from the class names)", metavar="NAME")
    image_column: str = setting("image", "image column of a `datasets` folder or Parquet data", metavar="NAME")
    label_column: str = setting("label", "label column of a `datasets` folder or Parquet data", metavar="NAME")
    concurrency: int = setting(4, "requests in flight at once (the local backend runs one at a time)", metavar="N")
    limit: int | None = setting(None, "annotate only the first N training images (in path order)", metavar="N")
    max_tokens: int = setting(512, "longest answer, in tokens", metavar="N")
    temperature: float = setting(0.0, "sampling temperature sent to the endpoint", metavar="T")
    timeout: float = setting(120.0, "seconds to wait for one answer before retrying", metavar="SECONDS")
    max_retries: int = setting(
        5, "retries of a request after a rate limit (429), server error (5xx) or time-out", metavar="N",
    )
    retry_base_delay: float = setting(
        1.0, "seconds before the first retry; doubled for each further one", metavar="SECONDS",
    )
    retry_max_delay: float = setting(60.0, "longest wait between two retries, in seconds", metavar="SECONDS")
    seed: int = setting(42, "seed of the retry jitter (and of an offline preset's random weights)", metavar="N")
    max_image_side: int = setting(
        1024, "images are downscaled so their longer side is at most this many pixels", metavar="PIXELS",
    )
    give_up_after: int = setting(
        20, "stop after this many images fail in a row (0: never), e.g. when the endpoint is down", metavar="N",
    )
    retry_flagged: bool = setting(
        False, "ask again for the images whose records are flagged (see --check) and keep only the new records; "
        "no other image is asked again",
    )

    def validate(self) -> None:
        """Refuse settings that cannot work, in one sentence each."""
        for name in ("data", "out", "model"):
            if not getattr(self, name):
                raise UserError(f"annotate needs --{name}; see `emovlm-kd annotate --help`.", exit_code=2)
        check_writable(self.out, folder=False)
        if self.backend not in BACKENDS:
            raise UserError(f"unknown backend {self.backend!r}; choose one of: {', '.join(BACKENDS)}.", exit_code=2)
        if self.backend == "openai" and not self.base_url:
            raise UserError(
                "the openai backend needs --base-url, e.g. https://api.openai.com/v1 or http://localhost:8000/v1.",
                exit_code=2,
            )
        positive = ("concurrency", "max_tokens", "max_image_side")
        for name in positive:
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be at least 1.", exit_code=2)
        if self.limit is not None and self.limit < 1:
            raise UserError("--limit must be at least 1.", exit_code=2)
        if self.timeout <= 0:
            raise UserError("--timeout must be above 0 seconds.", exit_code=2)
        for name in ("max_retries", "retry_base_delay", "retry_max_delay", "give_up_after", "temperature"):
            if getattr(self, name) < 0:
                raise UserError(f"--{name.replace('_', '-')} must not be negative.", exit_code=2)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
