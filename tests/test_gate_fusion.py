"""The gate: both inputs on one scale, every variant starting as the product of the two
experts, and a label both experts agree on kept."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from emovlm_kd.models.configs import GATE_VARIANTS, GateConfig
from emovlm_kd.models.gate import Gate

K = 6


def agreeing_inputs(seed: int, confidence: float, count: int = 256):
    """Head logits and VLM log-probabilities that put >= `confidence` on the same label."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(K, (count,), generator=generator)

    def expert():
        rest = torch.rand(count, K, generator=generator)
        rest[torch.arange(count), labels] = 0
        top = confidence + (1 - confidence) * torch.rand(count, generator=generator)
        probs = rest / rest.sum(-1, keepdim=True) * (1 - top)[:, None]
        probs[torch.arange(count), labels] = top
        return probs.clamp_min(1e-9).log()

    # The head's logits are unnormalised: shifted by an arbitrary constant per image.
    head = expert() + 10 * torch.randn(count, 1, generator=generator)
    return head, expert(), labels


@pytest.mark.parametrize("variant", GATE_VARIANTS)
def test_every_variant_starts_as_the_product_of_experts(variant):
    gate = Gate(GateConfig(num_labels=K, variant=variant)).eval()
    generator = torch.Generator().manual_seed(0)
    head_logits = 5 * torch.randn(64, K, generator=generator)
    vlm_logprobs = (3 * torch.randn(64, K, generator=generator)).log_softmax(-1)
    with torch.no_grad():
        fused = gate(head_logits, vlm_logprobs).log_softmax(-1)
    product = (head_logits.log_softmax(-1) + vlm_logprobs).log_softmax(-1)
    assert torch.allclose(fused, product, atol=1e-5)


@pytest.mark.parametrize("variant", GATE_VARIANTS)
def test_inputs_are_put_on_one_scale(variant):
    # A constant added to the head's logits or to the VLM's scores changes nothing.
    gate = Gate(GateConfig(num_labels=K, variant=variant)).eval()
    torch.manual_seed(0)
    for parameter in gate.parameters():  # away from the start, so the check is not trivial
        parameter.data.add_(0.3 * torch.randn_like(parameter))
    head, vlm = torch.randn(8, K), torch.randn(8, K).log_softmax(-1)
    with torch.no_grad():
        assert torch.allclose(gate(head, vlm), gate(head + 100.0, vlm - 7.0), atol=1e-4)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), confidence=st.floats(0.8, 0.99), variant=st.sampled_from(GATE_VARIANTS))
def test_untrained_gate_keeps_a_label_both_experts_are_sure_of(seed, confidence, variant):
    head, vlm, labels = agreeing_inputs(seed, confidence)
    gate = Gate(GateConfig(num_labels=K, variant=variant)).eval()
    with torch.no_grad():
        assert torch.equal(gate(head, vlm).argmax(-1), labels)


@pytest.mark.parametrize("variant", GATE_VARIANTS)
def test_a_gate_trained_against_agreement_still_keeps_it(variant):
    """Weights that would overrule two sure, agreeing experts (every label pushed to label 0)
    are overruled themselves; with keep_agreement off, the same weights do overrule them."""
    head, vlm, labels = agreeing_inputs(1, 0.8)
    outputs = {}
    for keep in (0.8, None):
        gate = Gate(GateConfig(num_labels=K, variant=variant, keep_agreement=keep)).eval()
        torch.manual_seed(0)
        for name, parameter in gate.named_parameters():
            parameter.data.add_(0.5 * torch.randn_like(parameter))
            if name.endswith("bias") and parameter.shape[-1] == K:
                parameter.data[..., 0] += 100.0  # a bias no agreement survives
        with torch.no_grad():
            outputs[keep] = gate(head, vlm).argmax(-1)
    assert torch.equal(outputs[0.8], labels)
    if variant != "dynamic":  # a positive mix of two log-probabilities cannot overrule them anyway
        assert (outputs[None] != labels).float().mean() > 0.5


def test_agreement_below_the_threshold_is_left_to_the_gate():
    head, vlm, labels = agreeing_inputs(2, 0.6)
    head, vlm = head.log_softmax(-1), vlm.log_softmax(-1)
    sure = (head.max(-1).values >= torch.tensor(0.8).log()) & (vlm.max(-1).values >= torch.tensor(0.8).log())
    gate = Gate(GateConfig(num_labels=K, keep_agreement=0.8)).eval()
    gate.fuse.bias.data[0] = 100.0
    with torch.no_grad():
        fused = gate(head, vlm).argmax(-1)
    assert (~sure).any() and torch.equal(fused[~sure], torch.zeros_like(fused[~sure]))
    assert torch.equal(fused[sure], labels[sure])


def test_trained_gate_keeps_agreement_on_the_trained_run(trained):
    """The property on a trained run's val and test images: where head and VLM agree with
    confidence >= 0.8 each, the fused label is theirs."""
    from emovlm_kd.analysis.evaluation import agreement_kept, score_run
    from emovlm_kd.run_folder import RunFolder

    run = RunFolder.open(trained[0])
    counts = [agreement_kept(score_run(run, split).probs, 0.8) for split in ("val", "test")]
    assert sum(c["kept"] for c in counts) >= 0.99 * sum(c["agreeing"] for c in counts)


def test_agreement_is_counted_for_the_report():
    from emovlm_kd.analysis.evaluation import agreement_kept

    head = torch.tensor([[0.9, 0.1], [0.85, 0.15], [0.6, 0.4], [0.1, 0.9]])
    vlm = torch.tensor([[0.95, 0.05], [0.9, 0.1], [0.9, 0.1], [0.8, 0.2]])
    fused = torch.tensor([[0.7, 0.3], [0.4, 0.6], [0.9, 0.1], [0.5, 0.5]])
    # Rows 0 and 1 are sure and agree; the fused model keeps row 0 only. Row 2: head unsure;
    # row 3: they disagree.
    counts = agreement_kept({"head": head, "vlm": vlm, "emovlm_kd": fused}, 0.8)
    assert counts == {"confidence": 0.8, "agreeing": 2, "kept": 1}
