"""On an accelerator, `predict_batches` preprocesses the next batch on a thread of its own
while the model runs the current one. Forced here on the CPU: the predictions are those of
the plain path, the encoding runs ahead on the other thread, and a batch the processor
cannot encode whole still gets every prediction it can."""

import threading

import pytest

from emovlm_kd.pipeline import EmoVLMKD


def sample_images(sample_root, count):
    return sorted((sample_root / "test").rglob("*.png"))[:count]


@pytest.fixture(scope="module")
def model(trained):
    return EmoVLMKD.from_pretrained(trained[0])


def rows(predictions):
    return [prediction.to_dict() for prediction in predictions]


def record_events(model, monkeypatch):
    """('encode', thread name, batch size) and ('model', batch size) in the order they happen."""
    events, lock = [], threading.Lock()
    real_encode, real_chunk = model.adapter.encode, EmoVLMKD._predict_chunk

    def encode(images, prompts, answers=None):
        with lock:
            events.append(("encode", threading.current_thread().name, len(images)))
        return real_encode(images, prompts, answers)

    def predict_chunk(self, images, inputs, explain):
        predictions = real_chunk(self, images, inputs, explain)
        with lock:
            events.append(("model", len(images)))
        return predictions

    monkeypatch.setattr(model.adapter, "encode", encode)
    monkeypatch.setattr(EmoVLMKD, "_predict_chunk", predict_chunk)
    return events


def test_the_cpu_encodes_inline_and_an_accelerator_ahead(model, trained):
    assert model.adapter.device.type == "cpu" and not model.prepare_ahead


@pytest.mark.parametrize("workers", [0, 2])
def test_predictions_encoded_ahead_equal_the_plain_path(model, sample_root, tmp_path, monkeypatch, workers):
    (tmp_path / "broken.jpg").write_text("this is not an image")
    good = sample_images(sample_root, 7)
    paths = [*good[:3], tmp_path / "broken.jpg", *good[3:]]
    plain = rows(model.predict_paths(paths, batch_size=2, workers=workers))

    monkeypatch.setattr(model, "prepare_ahead", True)
    monkeypatch.setattr(model, "cpu_cache_bytes", None)  # batches whole, as on a GPU: one encoding each
    events = record_events(model, monkeypatch)
    ahead = rows(model.predict_paths(paths, batch_size=2, workers=workers))

    assert ahead == plain
    assert [row["image"] for row in ahead] == list(map(str, paths))
    assert [row["error"] is None for row in ahead] == [True] * 3 + [False] + [True] * 4
    encodes = [event for event in events if event[0] == "encode"]
    assert [size for _, _, size in encodes] == [2, 1, 2, 2]  # the broken image is left out of its batch
    assert {name for _, name, _ in encodes} == {"emovlm-kd-prepare_0"}
    # The second batch was encoded before the model ran the first, and so on: one batch ahead.
    assert events[:3] == [("encode", "emovlm-kd-prepare_0", 2), ("encode", "emovlm-kd-prepare_0", 1), ("model", 2)]
    assert [event for event in events if event[0] == "model"] == [("model", 2), ("model", 1), ("model", 2), ("model", 2)]


def test_a_batch_that_cannot_be_encoded_whole_falls_back_to_one_image_at_a_time(model, sample_root, monkeypatch):
    from emovlm_kd.images import load_image

    paths = sample_images(sample_root, 4)
    plain = rows(model.predict_paths(paths, batch_size=4))
    monkeypatch.setattr(model, "prepare_ahead", True)
    real_encode = model.adapter.encode
    refused = load_image(paths[1]).tobytes()  # an image holds no path: known by its pixels

    def encode(images, prompts, answers=None):
        if any(image.tobytes() == refused for image in images):
            raise ValueError("this image cannot be processed")
        return real_encode(images, prompts, answers)

    monkeypatch.setattr(model.adapter, "encode", encode)
    ahead = rows(model.predict_paths(paths, batch_size=4))

    assert [row["image"] for row in ahead] == list(map(str, paths))
    assert [ahead[i] for i in (0, 2, 3)] == [plain[i] for i in (0, 2, 3)]
    assert ahead[1]["label"] is None and "ValueError: this image cannot be processed" in ahead[1]["error"]


def test_stopping_early_leaves_no_thread_behind(model, sample_root, monkeypatch):
    monkeypatch.setattr(model, "prepare_ahead", True)
    batches = model.predict_batches(sample_images(sample_root, 8), batch_size=2)
    first = next(batches)
    batches.close()
    assert len(first) == 2
    assert not [thread for thread in threading.enumerate() if thread.name.startswith("emovlm-kd-prepare")]
