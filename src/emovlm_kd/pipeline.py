"""EmoVLM-KD at inference: one VLM whose visual tokens feed both the head and the VLM's own
label scoring, fused by the gate."""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image

from emovlm_kd.cpu_memory import keep_freed_memory
from emovlm_kd.errors import UserError
from emovlm_kd.images import ImageError, is_image_file
from emovlm_kd.labels import Taxonomy
from emovlm_kd.models.gate import Gate
from emovlm_kd.models.head import DistillHead
from emovlm_kd.prompts import (
    EXPLANATION_PROMPT,
    classification_answer,
    classification_prompt,
    first_sentence,
)
from emovlm_kd.run_folder import RunFolder, load_rgb

log = logging.getLogger("emovlm_kd")


@dataclass
class Prediction:
    """One image's result; on failure `error` holds one sentence and the rest is empty."""

    image: str
    label: str | None = None
    probs: dict[str, float] = field(default_factory=dict)
    vlm: dict[str, float] = field(default_factory=dict)
    head: dict[str, float] = field(default_factory=dict)
    explanation: str | None = None
    error: str | None = None

    def to_dict(self) -> dict:
        return {
            "image": self.image,
            "label": self.label,
            "probs": self.probs,
            "vlm": self.vlm,
            "head": self.head,
            "explanation": self.explanation,
            "error": self.error,
        }


def _as_mapping(labels: tuple[str, ...], probs: torch.Tensor) -> dict[str, float]:
    # Rounded so that printed output is stable to the last digit across runs.
    return {label: round(float(p), 6) for label, p in zip(labels, probs)}


class EmoVLMKD:
    """The trained model of a run folder."""

    def __init__(self, adapter, head: DistillHead, gate: Gate, taxonomy: Taxonomy):
        self.adapter = adapter
        self.head = head.eval()
        self.gate = gate.eval()
        self.taxonomy = taxonomy
        self.prompt = classification_prompt(taxonomy)
        self.answers = [classification_answer(label) for label in taxonomy.labels]
        # What a batch on a CPU is sized against (see `chunk_size`); None takes every batch whole.
        self.cpu_cache_bytes: int | None = last_level_cache_bytes()
        # The classification prompt's length for each image size seen (`chunk_size`): the
        # visual tokens depend on the pixels' size alone, so one encoding per size is enough.
        self._prompt_lengths: dict[tuple[int, int], int] = {}
        # Whether `predict_batches` preprocesses the next batch while the model runs this one
        # (see `predict_batches`): on an accelerator, where the host's cores are otherwise idle.
        self.prepare_ahead = adapter.device.type != "cpu"
        if adapter.device.type == "cpu":
            keep_freed_memory()  # no page faults for every activation of every batch

    @classmethod
    def from_pretrained(cls, run_dir: str | Path, dtype: torch.dtype | None = None) -> EmoVLMKD:
        """Load the tuned VLM, head and gate of a finished run, or of an exported model: its
        folder, or its Hugging Face Hub id (a name that is no folder here), downloaded first.

        `dtype` runs the VLM in that precision (default: bf16 on a GPU, fp32 on a CPU); the
        head and gate, a few thousand parameters, stay in fp32."""
        run = RunFolder.open(_run_folder(run_dir))
        run.require("instruct", "distill", "gate")
        taxonomy = run.taxonomy
        adapter = run.load_tuned_vlm(dtype)
        device = adapter.device
        head = DistillHead.from_pretrained(run.stage_dir("distill"), device=device)
        run.check_head_width(head, adapter.pooled_width)
        gate = Gate.from_pretrained(run.stage_dir("gate"), device=device)
        return cls(adapter, head, gate, taxonomy)

    @torch.no_grad()
    def predict_images(self, images: list[Image.Image], explain: bool = False) -> list[Prediction]:
        """Predictions for RGB images, in order; a large batch on a CPU runs in chunks (`chunk_size`)."""
        return self._predict_encoded(self._encoded_chunks(images), explain)

    def _encoded_chunks(self, images: list[Image.Image]) -> Iterator[tuple[list[Image.Image], dict]]:
        """The batch's chunks, each with its model inputs (on the host), encoded as they are asked for."""
        # Equal chunks (sizes differ by one at most): no small remainder runs alone.
        count = -(-len(images) // self.chunk_size(images))
        bounds = [len(images) * part // count for part in range(count + 1)]
        for start, end in itertools.pairwise(bounds):
            chunk = images[start:end]
            yield chunk, self.adapter.encode(chunk, [self.prompt] * len(chunk))

    def _predict_encoded(self, chunks: Iterable[tuple[list[Image.Image], dict]], explain: bool) -> list[Prediction]:
        return [prediction for images, inputs in chunks for prediction in self._predict_chunk(images, inputs, explain)]

    def chunk_size(self, images: list[Image.Image]) -> int:
        """Most images per model call: on a GPU all of them; on a CPU as many as keep the
        language model's MLP activations within the last-level cache (`cpu_cache_bytes`).

        On a CPU the elementwise layers (activations, gating products, rotary embeddings,
        residual adds) are bound by memory traffic; once a call's activations outgrow the
        cache, each image costs more: on the `bench` preset with a 32 MiB cache, torch's
        profiler puts `mul`, `silu` and `sigmoid` per image at several times their batch-1
        cost at batch 16, while the matrix products and attention stay flat. The MLP's gate,
        up and product, three [images x T, intermediate] tensors, are the widest ones alive
        together. Sizing the chunks encodes one image of each size once more.
        """
        if self.adapter.device.type != "cpu" or self.cpu_cache_bytes is None or len(images) < 2:
            return max(1, len(images))
        # T: the longest prompt, that of the largest image (visual tokens grow with the pixels);
        # the few answer tokens packed after it are left out.
        largest = max(images, key=lambda image: image.width * image.height)
        tokens = self._prompt_length(largest)
        text = self.adapter.model.config.get_text_config()
        per_image = 3 * tokens * text.intermediate_size * self.adapter.model.dtype.itemsize
        return max(1, min(len(images), self.cpu_cache_bytes // per_image))

    def _prompt_length(self, image: Image.Image) -> int:
        """Tokens of the classification prompt with an image of this one's size."""
        size = image.size
        if size not in self._prompt_lengths:
            if len(self._prompt_lengths) >= 4096:  # bounded: a folder of photos may hold thousands of sizes
                self._prompt_lengths.clear()
            self._prompt_lengths[size] = self.adapter.encode([image], [self.prompt])["input_ids"].shape[1]
        return self._prompt_lengths[size]

    @torch.no_grad()
    def _predict_chunk(self, images: list[Image.Image], inputs: dict, explain: bool) -> list[Prediction]:
        # On the device once: the pixels are the largest input, and cross to a GPU one time.
        inputs = self.adapter.to_device(inputs)
        visual = self.adapter.visual_tokens(inputs)  # the one visual-encoder pass
        head_logits = self.head(visual.pooled().to(self.adapter.device))
        vlm_logprobs = self.adapter.answer_logprobs(inputs, self.answers, visual=visual, include_shared=False).log_softmax(-1)
        fused = self.gate(head_logits, vlm_logprobs).softmax(-1).cpu()
        head_probs, vlm_probs = head_logits.softmax(-1).cpu(), vlm_logprobs.exp().cpu()
        explanations = [None] * len(images)
        if explain:
            prompts = self.adapter.encode(images, [EXPLANATION_PROMPT] * len(images))
            explanations = [first_sentence(text) for text in self.adapter.generate(prompts)]
        labels = self.taxonomy.labels
        return [
            Prediction(
                image="",
                label=labels[int(fused[i].argmax())],
                probs=_as_mapping(labels, fused[i]),
                vlm=_as_mapping(labels, vlm_probs[i]),
                head=_as_mapping(labels, head_probs[i]),
                explanation=explanations[i],
            )
            for i in range(len(images))
        ]

    def predict_paths(
        self, paths: Iterable[str | Path], batch_size: int = 8, explain: bool = False, workers: int = 0
    ) -> Iterator[Prediction]:
        """Predictions for image files, in order; a file that cannot be read gets its error.

        `workers` threads read and decode the next batches while the model runs (0: the
        images of a batch are decoded when the model asks for it)."""
        for batch in self.predict_batches(list(paths), batch_size=batch_size, explain=explain, workers=workers):
            yield from batch

    def predict_batches(
        self, paths: list[str | Path], batch_size: int = 8, explain: bool = False, workers: int = 0, skip: int = 0
    ) -> Iterator[list[Prediction]]:
        """`predict_paths` one batch at a time, leaving out the first `skip` paths (done already).

        Batches are fixed slices of `paths` (the first may be cut by `skip`), so a run resumed
        after `skip` images batches the rest as the whole run did and gets the same numbers.
        """
        starts = range(skip - skip % batch_size, len(paths), batch_size)
        batches = [[str(path) for path in paths[max(start, skip) : start + batch_size]] for start in starts]
        decoded = _decoded(batches, workers)
        if not self.prepare_ahead:
            for loaded in decoded:
                yield self._predict_loaded(loaded, None, explain)
            return
        # One batch ahead, on a thread of its own: the resizing, patching and tokenizing
        # (45% of a batch of 32 on an H200 with Qwen2-VL's image processor, before our own
        # preprocessing) overlap the model's kernels on the GPU. Not on a CPU, where the
        # model's threads take every core: there it gained nothing on `bench` and cost 12%
        # on `tiny` (scripts/time_predict_ahead.py).
        with ThreadPoolExecutor(1, thread_name_prefix="emovlm-kd-prepare") as pool:
            ahead = None
            try:
                for loaded in decoded:
                    upcoming = pool.submit(self._prepared, loaded)
                    if ahead is not None:
                        yield self._predict_loaded(*ahead.result(), explain)
                    ahead = upcoming
                if ahead is not None:
                    yield self._predict_loaded(*ahead.result(), explain)
            finally:  # also when the caller stops early
                if ahead is not None:
                    ahead.cancel()

    def _prepared(self, loaded: list[tuple[str, Image.Image | str]]) -> tuple[list, list | None]:
        """A decoded batch and its readable images' encoded chunks; None where encoding
        failed (`_flush` then takes the images one at a time, as without preparing)."""
        readable = [image for _, image in loaded if not isinstance(image, str)]
        try:
            return loaded, list(self._encoded_chunks(readable)) if readable else []
        except Exception:
            return loaded, None

    def _predict_loaded(
        self, loaded: list[tuple[str, Image.Image | str]], chunks: list | None, explain: bool
    ) -> list[Prediction]:
        """Predictions for a batch of decoded images, each unreadable one in its place with its error."""
        readable = [(path, image) for path, image in loaded if not isinstance(image, str)]
        predicted = iter(self._flush(readable, explain, chunks))
        return [
            Prediction(image=path, error=image) if isinstance(image, str) else next(predicted) for path, image in loaded
        ]

    def _flush(self, batch, explain, chunks: list | None = None) -> list[Prediction]:
        """Predictions for (path, image) pairs, from their encoded `chunks` where given."""
        if not batch:
            return []
        try:
            if chunks is None:
                predictions = self.predict_images([image for _, image in batch], explain=explain)
            else:
                predictions = self._predict_encoded(chunks, explain)
        except Exception as error:
            if len(batch) > 1:
                # One image the model cannot take must not cost the others their predictions.
                return [prediction for item in batch for prediction in self._flush([item], explain)]
            path = batch[0][0]
            log.debug("%s could not be classified", path, exc_info=True)  # the traceback, with -v
            reason = f"{type(error).__name__}: {' '.join(str(error).split())[:200]}"
            message = f"image {path} could not be classified ({reason}); check the image, or report this message."
            return [Prediction(image=path, error=message)]
        for (path, _), prediction in zip(batch, predictions):
            prediction.image = path
        return predictions


def _decoded(batches: list[list[str]], threads: int) -> Iterator[list[tuple[str, Image.Image | str]]]:
    """Each batch of image files decoded, in order: (path, RGB image or its error sentence).

    `threads` threads decode the images of up to two batches each ahead of the one the
    model is given (0: none ahead). Threads, not processes: PIL decodes with the GIL
    released, and a process forked from the one holding the model costs the model a
    copy-on-write fault for every page it writes while the fork lives. Measured on the
    `bench` preset, 64 JPEGs at batch 8 on 2 cores: about 80,000 such faults and 0.9 s of
    system time per run, against 0.25 s for all the decoding.
    """
    if threads == 0 or not batches:
        yield from ([_decode(path) for path in batch] for batch in batches)
        return
    pool = ThreadPoolExecutor(threads, thread_name_prefix="emovlm-kd-decode")
    pending: deque[list] = deque()
    upcoming = iter(batches)

    def submit_next():
        for batch in itertools.islice(upcoming, 1):
            pending.append([pool.submit(_decode, path) for path in batch])

    try:
        for _ in range(2 * threads):
            submit_next()
        while pending:
            loaded = [future.result() for future in pending.popleft()]
            submit_next()
            yield loaded
    finally:  # also when the caller stops early: no more decoding starts
        pool.shutdown(wait=False, cancel_futures=True)


def _decode(path: str) -> tuple[str, Image.Image | str]:
    """The path and its RGB image, or the sentence saying why it cannot be used."""
    try:
        return path, load_rgb(path)
    except ImageError as error:
        return path, str(error)


@functools.cache
def last_level_cache_bytes() -> int:
    """Bytes of the CPU's largest cache, as Linux reports it; 32 MiB (a common server L3) elsewhere."""
    sizes = []
    for entry in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        with contextlib.suppress(OSError, ValueError):
            text = entry.read_text().strip()  # "32768K"
            sizes.append(int(text.rstrip("KM")) * {"K": 2**10, "M": 2**20}.get(text[-1:], 1))
    return max(sizes, default=32 * 2**20)


def is_hub_id(name: str) -> bool:
    """True for a name the Hugging Face Hub could hold: `name` or `namespace/name`."""
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(name)
    except ValueError:
        return False
    return True


def _run_folder(name: str | Path) -> Path:
    """`name` as a folder; a hub id that is no folder here is downloaded (or found in the cache)."""
    path = Path(name)
    if path.exists() or not is_hub_id(str(name)):
        return path
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(str(name)))
    except OSError as error:  # offline, not found, private, no network: all OSErrors there
        raise UserError(
            f"{name} is no folder here, and downloading it from the Hugging Face Hub failed "
            f"({type(error).__name__}); give a run folder, or the hub id of an exported model with the "
            "network on (HF_HUB_OFFLINE unset) and, for a private one, `hf auth login` done."
        ) from None


def expand_paths(paths: Iterable[str | Path]) -> list[Path]:
    """Files as given, folders walked recursively for images (sorted); missing paths are an error."""
    found: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.is_file() and is_image_file(p))
        elif path.exists():
            found.append(path)
        else:
            raise UserError(f"{path} does not exist; give image files or folders of images.")
    return found
