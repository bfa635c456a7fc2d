"""Exact VLM class probabilities: full answers scored from one encoding per image, for the
tiny model of every VLM family."""

import functools

import pytest
import torch
from PIL import Image

from emovlm_kd.labels import EMOTION6, MIKELS8
from emovlm_kd.models.registry import load_vlm, offline_preset_for
from emovlm_kd.models.vlm import ADAPTERS
from emovlm_kd.prompts import classification_answer, classification_prompt


@pytest.fixture(scope="module", params=list(ADAPTERS))
def adapter(request, tiny_adapter):
    """Each family's tiny adapter (Qwen2-VL's is the session's)."""
    if request.param == tiny_adapter.family:
        return tiny_adapter
    return load_vlm(offline_preset_for(request.param), seed=0)


def teacher_forced_logprob(adapter, image, prompt, answer, with_closing=False) -> float:
    """The reference: one full forward of prompt + answer, summing the log-probs of the
    answer's tokens up to its closing `'}` (or through it, `with_closing`)."""
    return sum(teacher_forced_token_logprobs(adapter, image, prompt, answer, with_closing))


def teacher_forced_token_logprobs(adapter, image, prompt, answer, with_closing=False) -> list[float]:
    """The log-prob of each of the answer's tokens up to its closing, one full forward."""
    inputs = adapter.encode([image], [prompt], [answer])
    labels = inputs.pop("labels")
    with torch.no_grad():
        logits = adapter.model(**inputs).logits[0, :-1].float()
    targets = labels[0, 1:]
    positions = (targets != -100).nonzero()[:, 0]
    closing = 0 if with_closing else len(adapter.tokenizer("'}", add_special_tokens=False).input_ids)
    # The end-of-turn token closes the turn, not the answer; nor is the closing scored.
    positions = positions[: len(positions) - 1 - closing]
    return logits[positions].log_softmax(-1).gather(-1, targets[positions][:, None])[:, 0].tolist()


def images():
    # Different sizes: different numbers of image tokens, so left padding is exercised.
    return [
        Image.new("RGB", (224, 224), (200, 40, 40)),
        Image.linear_gradient("L").convert("RGB").resize((160, 96)),
        Image.new("RGB", (64, 300), (20, 20, 220)),
    ]


def test_scores_equal_teacher_forcing_with_one_image_encoding(adapter):
    encoder = next(iter(adapter.vision_modules().values()))
    for taxonomy in (EMOTION6, MIKELS8):
        prompt = classification_prompt(taxonomy)
        answers = [classification_answer(label) for label in taxonomy.labels]
        batch = images()
        calls = []
        hook = encoder.register_forward_hook(lambda *args: calls.append(1))
        try:
            scores = adapter.answer_logprobs(adapter.encode(batch, [prompt] * len(batch)), answers)
        finally:
            hook.remove()
        assert len(calls) == 1  # one visual pass for all images and all K answers
        reference = torch.tensor(
            [[teacher_forced_logprob(adapter, image, prompt, answer) for answer in answers] for image in batch]
        )
        assert scores.shape == (len(batch), len(taxonomy))
        assert torch.allclose(scores, reference, atol=1e-4), (scores - reference).abs().max()
        assert torch.allclose(scores.softmax(-1), reference.softmax(-1), atol=1e-4)
        # Leaving out the opening all answers share changes no probability.
        own = adapter.answer_logprobs(adapter.encode(batch, [prompt] * len(batch)), answers, include_shared=False)
        assert torch.allclose(own.softmax(-1), reference.softmax(-1), atol=1e-4)
        assert not torch.allclose(own, reference, atol=1e-2)


def test_the_closing_is_scored_where_one_label_begins_another(adapter):
    # 'sad' is how 'sadness' begins: only the closing tells the two answers apart.
    answers = [classification_answer(label) for label in ("sad", "sadness", "joy")]
    ids, _ = adapter.scored_answer_ids(answers)
    closing = adapter.tokenizer("'}", add_special_tokens=False).input_ids
    assert all(row[-len(closing):] == closing for row in ids)
    image, prompt = images()[1], "Which emotion?"
    scores = adapter.answer_logprobs(adapter.encode([image], [prompt]), answers)
    reference = torch.tensor([[teacher_forced_logprob(adapter, image, prompt, a, with_closing=True) for a in answers]])
    assert torch.allclose(scores, reference, atol=1e-4), (scores - reference).abs().max()


def test_every_token_of_the_label_counts(adapter):
    # 'excitement' and 'sadness' take several tokens; a first-token-only score would differ.
    answers = [classification_answer(label) for label in MIKELS8.labels]
    lengths = {len(adapter.tokenizer(a).input_ids) for a in answers}
    assert len(lengths) > 1
    image, prompt = images()[0], classification_prompt(MIKELS8)
    scores = adapter.answer_logprobs(adapter.encode([image], [prompt]), answers)[0]
    ids, shared = adapter.scored_answer_ids(answers)
    multi = [k for k, row in enumerate(ids) if len(row) - shared > 1]
    assert multi  # several labels take more than one token of their own
    for k, answer in enumerate(answers):
        tokens = teacher_forced_token_logprobs(adapter, image, prompt, answer)
        assert len(tokens) == len(ids[k])
        assert scores[k].item() == pytest.approx(sum(tokens), abs=1e-4)
        if k in multi:
            # A scorer that stopped at a label's first own token would be off by the rest.
            first_token_only = sum(tokens[: shared + 1])
            assert abs(scores[k].item() - first_token_only) > 1e-3


def test_scores_do_not_depend_on_batch_company(adapter):
    prompt = classification_prompt(EMOTION6)
    answers = [classification_answer(label) for label in EMOTION6.labels]
    batch = images()
    together = adapter.answer_logprobs(adapter.encode(batch, [prompt] * 3), answers)
    alone = adapter.answer_logprobs(adapter.encode(batch[1:2], [prompt]), answers)
    assert torch.allclose(together[1], alone[0], atol=1e-4)


def test_visual_tokens_are_shared_by_the_head_input(adapter):
    batch = images()
    inputs = adapter.encode(batch, ["describe"] * 3)
    visual = adapter.visual_tokens(inputs)
    # One visual token per image placeholder token of its prompt.
    image_tokens = (inputs["input_ids"] == adapter.model.config.image_token_id).sum(-1).tolist()
    assert [t.shape[0] for t in visual.per_image] == image_tokens
    # The encoder alone (as the feature cache runs it) gives the same tokens.
    alone = adapter.visual_tokens(adapter.encode_images(batch))
    assert all(torch.equal(a, b) for a, b in zip(alone.per_image, visual.per_image))
    # The head pools the visual encoder's own tokens: LLaVA's tower tokens, one per projected
    # token (the projector is a connector); the merged tokens elsewhere.
    assert (visual.encoder_tokens is not None) == (adapter.family == "llava")
    pooled_from = visual.per_image if visual.encoder_tokens is None else visual.encoder_tokens
    assert [t.shape[0] for t in pooled_from] == image_tokens
    assert torch.allclose(visual.pooled(), torch.stack([t.float().mean(0) for t in pooled_from]))
    if adapter.family == "llava":
        config = adapter.model.config
        tower = adapter.model.model.vision_tower(adapter.to_device(adapter.encode_images(batch))["pixel_values"],
                                                 output_hidden_states=True)
        expected = tower.hidden_states[config.vision_feature_layer][:, 1:]  # [B, T, D_tower], class token dropped
        assert visual.pooled().shape == (3, adapter.pooled_width) == (3, config.vision_config.hidden_size)
        assert adapter.pooled_width != adapter.hidden_size
        assert torch.allclose(visual.pooled(), expected.float().mean(1), atol=1e-6)
    else:
        assert visual.pooled().shape == (3, adapter.pooled_width) == (3, adapter.hidden_size)
    # Passing the shared visual tokens gives the same scores as recomputing them.
    answers = [classification_answer(label) for label in EMOTION6.labels]
    assert torch.equal(adapter.answer_logprobs(inputs, answers, visual=visual), adapter.answer_logprobs(inputs, answers))


def test_attention_without_custom_masks_is_refused_in_one_sentence():
    from emovlm_kd.errors import UserError
    from emovlm_kd.models.vlm.qwen2_vl import Qwen2VLAdapter

    adapter = Qwen2VLAdapter.tiny(seed=0)
    adapter.model.config.get_text_config()._attn_implementation = "flash_attention_2"
    inputs = adapter.encode(images()[:1], ["Which emotion?"])
    with pytest.raises(UserError, match="attn_implementation='sdpa'"):
        adapter.answer_logprobs(inputs, [classification_answer(label) for label in EMOTION6.labels])


def test_eager_attention_scores_the_same():
    from emovlm_kd.models.vlm.qwen2_vl import Qwen2VLAdapter

    adapter = Qwen2VLAdapter.tiny(seed=0)
    inputs = adapter.encode(images(), ["Which emotion?"] * 3)  # left padding included
    answers = [classification_answer(label) for label in MIKELS8.labels]
    sdpa = adapter.answer_logprobs(inputs, answers)
    adapter.model.set_attn_implementation("eager")
    assert adapter.model.config.get_text_config()._attn_implementation == "eager"
    assert torch.allclose(adapter.answer_logprobs(inputs, answers), sdpa, atol=1e-4)


def test_a_batch_encodes_its_shared_opening_once_and_the_last_layer_only_where_scored(adapter):
    # The system prompt before the image is the same for every sequence: one row runs it.
    # The last layer's other positions feed nothing: its keys and values come before its MLP.
    layers = getattr(adapter.model.model, adapter.language_model_name).layers
    shapes = {0: [], -1: []}
    hooks = [layers[index].mlp.register_forward_hook(
        lambda module, args, output, index=index: shapes[index].append(tuple(args[0].shape[:2]))) for index in shapes]
    prompt = classification_prompt(EMOTION6)
    answers = [classification_answer(label) for label in EMOTION6.labels]
    inputs = adapter.encode(images(), [prompt] * 3)
    try:
        adapter.answer_logprobs(inputs, answers, include_shared=False)
        with torch.no_grad():  # outside scoring the model is itself again
            adapter.model(**adapter.to_device(inputs))
    finally:
        for hook in hooks:
            hook.remove()
    ids, shared = adapter.scored_answer_ids(answers)
    scored = 1 + sum(len(answer) - shared - 1 for answer in ids)
    row = inputs["input_ids"][0][inputs["attention_mask"][0].bool()].tolist()
    opening, length = row.index(adapter.image_token_id), inputs["input_ids"].shape[1]
    assert opening > 0
    assert shapes[-1] == [(1, opening), (3, scored), (3, length)]
    assert shapes[0] == [(1, opening), (3, length + shared + scored - 1 - opening), (3, length)]


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"])
def test_qwen_patch_embedding_is_one_matrix_product(family, tiny_adapter, monkeypatch):
    adapter = tiny_adapter if family == tiny_adapter.family else load_vlm(offline_preset_for(family), seed=0)
    convolution = adapter.model.model.visual.patch_embed.proj
    patches = torch.randn(7, *convolution.weight.shape[1:])  # pre-cut patches, one kernel each
    with torch.no_grad():
        expected = type(convolution).forward(convolution, patches)

        def no_convolution(*args, **kwargs):
            raise AssertionError("the patch embedding ran a convolution")

        monkeypatch.setattr(torch.nn.functional, "conv3d", no_convolution)
        assert torch.allclose(convolution(patches), expected, atol=1e-5)


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"])
def test_qwen_vision_attention_makes_one_call_per_run_of_one_length(family, tiny_adapter, monkeypatch):
    # One call per block for a run of consecutive images (2.5: windows) of one length.
    adapter = tiny_adapter if family == tiny_adapter.family else load_vlm(offline_preset_for(family), seed=0)
    blocks = adapter.model.model.visual.blocks
    calls = []  # the batch size of each attention call
    attention = torch.nn.functional.scaled_dot_product_attention

    def counted(query, *args, **kwargs):
        calls.append(query.shape[0])
        return attention(query, *args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", counted)
    one_size = [Image.effect_noise((112, 112), 20 + 20 * index).convert("RGB") for index in range(3)]
    two_sizes = [*one_size[:2], Image.effect_noise((160, 96), 50).convert("RGB")]

    def tokens(images):
        calls.clear()
        with torch.no_grad():
            return torch.cat(adapter.visual_tokens(adapter.encode_images(images)).per_image), list(calls)

    ours, ours_calls = tokens(one_size)
    mixed, mixed_calls = tokens(two_sizes)
    for block in blocks:  # transformers' own forward: one call per image (per window in 2.5)
        monkeypatch.setattr(block.attn, "forward", functools.partial(type(block.attn).forward, block.attn))
    theirs, theirs_calls = tokens(one_size)
    mixed_theirs, mixed_theirs_calls = tokens(two_sizes)
    assert len(ours_calls) == len(blocks) < len(theirs_calls)
    assert sum(ours_calls) == sum(theirs_calls)  # the same images (or windows), all at once
    assert len(blocks) < len(mixed_calls) < len(mixed_theirs_calls)  # a run of two, then one
    assert sum(mixed_calls) == sum(mixed_theirs_calls)
    for got, expected in ((ours, theirs), (mixed, mixed_theirs)):
        assert got.shape == expected.shape and torch.allclose(got, expected, atol=1e-6), family
    monkeypatch.undo()  # ours again, under eager attention: transformers' forward, no sdpa call
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", counted)
    monkeypatch.setattr(blocks[0].attn.config, "_attn_implementation", "eager")
    eager, eager_calls = tokens(one_size)
    assert eager_calls == [] and torch.allclose(eager, theirs, atol=1e-5), family


def test_the_prompt_length_depends_on_the_image_size_alone(adapter):
    # `EmoVLMKD.chunk_size` remembers the length per image size; each family's image
    # processor must give two images of one size, whatever their pixels, the same tokens.
    prompt = classification_prompt(EMOTION6)
    for size in ((224, 224), (160, 96), (64, 300)):
        plain = Image.new("RGB", size, (200, 40, 40))
        textured = Image.effect_noise(size, 60).convert("RGB")
        lengths = [adapter.encode([image], [prompt])["input_ids"].shape[1] for image in (plain, textured)]
        assert lengths[0] == lengths[1], (adapter.family, size)
