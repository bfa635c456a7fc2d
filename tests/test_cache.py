import torch

from emovlm_kd.cache import TensorCache, fingerprint


def test_rows_are_computed_once_and_reused_across_instances(tmp_path):
    calls = []

    def compute(items):
        calls.append(list(items))
        return torch.tensor([[float(i), float(i) * 2] for i in items])

    keys, items = ["a", "b", "c", "a"], [1, 2, 3, 1]
    first = TensorCache(tmp_path, "kind", "fp").fill(keys, items, compute, batch_size=2, description="t")
    assert first.tolist() == [[1, 2], [2, 4], [3, 6], [1, 2]]
    assert sum(len(c) for c in calls) == 3  # the duplicate image is computed once
    calls.clear()
    again = TensorCache(tmp_path, "kind", "fp").fill(keys, items, compute, batch_size=2, description="t")
    assert calls == [] and torch.equal(first, again)
    # Another fingerprint (another model) never reads these rows.
    TensorCache(tmp_path, "kind", "other").fill(["a"], [1], compute, batch_size=2, description="t")
    assert calls == [[1]]


def test_partial_progress_survives(tmp_path):
    def failing(items):
        if 3 in items:
            raise RuntimeError("crash")
        return torch.tensor([[float(i)] for i in items])

    cache = TensorCache(tmp_path, "kind", "fp")
    try:
        cache.fill(["a", "b", "c"], [1, 2, 3], failing, batch_size=1, description="t", flush_every=1)
    except RuntimeError:
        pass
    assert set(TensorCache(tmp_path, "kind", "fp").rows()) == {"a", "b"}


def test_fingerprint_follows_weights_and_settings():
    weights = {"w": torch.ones(3)}
    assert fingerprint(weights, size=224) == fingerprint({"w": torch.ones(3)}, size=224)
    assert fingerprint(weights, size=224) != fingerprint({"w": torch.ones(3) * 2}, size=224)
    assert fingerprint(weights, size=224) != fingerprint(weights, size=384)
