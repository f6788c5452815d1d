"""GapDropout keeps nn.Dropout's contract: independent zeros with probability p, survivors
scaled by 1/(1-p), the same mask in backward, identity in eval, seeded draws."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from worker.gap_dropout import GapDropout, dropped_positions, use_gap_dropout


@pytest.mark.parametrize("p", [0.05, 0.1, 0.5])
def test_each_element_is_dropped_independently_with_probability_p(p: float) -> None:
    torch.manual_seed(0)
    n, trials = 4_000, 600
    counts = torch.zeros(n)
    pairs = 0
    for _ in range(trials):
        positions = dropped_positions(n, p)
        assert positions.dtype == torch.int64
        assert bool((positions[1:] > positions[:-1]).all())  # sorted, no repeats
        assert int(positions[0]) >= 0 and int(positions[-1]) < n
        dropped = torch.zeros(n, dtype=torch.bool)
        dropped[positions] = True
        counts += dropped
        pairs += int((dropped[1:] & dropped[:-1]).sum())
    total = n * trials
    sigma = math.sqrt(total * p * (1 - p))
    assert abs(counts.sum().item() - total * p) < 5 * sigma
    # The same rate at the start, the middle and the end of the tensor...
    for block in counts.view(8, -1):
        cells = block.numel() * trials
        assert abs(block.sum().item() / cells - p) < 5 * math.sqrt(p * (1 - p) / cells)
    # ...and neighbours independent: both dropped with probability p^2.
    cells = (n - 1) * trials
    assert abs(pairs / cells - p * p) < 5 * math.sqrt(p * p * (1 - p * p) / cells)


def test_survivors_are_scaled_and_backward_uses_the_same_mask() -> None:
    torch.manual_seed(1)
    dropout = GapDropout(0.2).train()
    x = torch.randn(6, 30, 64, requires_grad=True)
    y = dropout(x)
    kept = y != 0
    assert 0.7 < kept.float().mean().item() < 0.9
    torch.testing.assert_close(y[kept], x.detach()[kept] / 0.8)
    upstream = torch.randn_like(y)
    y.backward(upstream)
    assert x.grad is not None
    torch.testing.assert_close(x.grad, torch.where(kept, upstream / 0.8, 0.0))


def test_bf16_inputs_and_non_contiguous_inputs() -> None:
    torch.manual_seed(2)
    dropout = GapDropout(0.1).train()
    x = torch.randn(64, 48).t().to(torch.bfloat16).requires_grad_()
    y = dropout(x)
    assert y.dtype == torch.bfloat16 and y.shape == x.shape
    kept = y != 0
    torch.testing.assert_close(y[kept], (x.detach() * (1 / 0.9)).to(torch.bfloat16)[kept])
    y.sum().backward()
    assert x.grad is not None and x.grad.dtype == torch.bfloat16
    assert bool(((x.grad == 0) == ~kept).all())


def test_eval_mode_and_edge_probabilities() -> None:
    x = torch.randn(10, 10)
    assert GapDropout(0.3).eval()(x) is x
    assert GapDropout(0.0).train()(x) is x
    assert bool((GapDropout(1.0).train()(x) == 0).all())
    with pytest.raises(ValueError, match="dropout probability"):
        GapDropout(1.5)


def test_draws_follow_torch_seed() -> None:
    dropout = GapDropout(0.1).train()
    x = torch.ones(1000)
    torch.manual_seed(7)
    first, second = dropout(x), dropout(x)
    torch.manual_seed(7)
    assert torch.equal(dropout(x), first)
    assert not torch.equal(first, second)


def test_replaces_every_lora_dropout_and_leaves_the_adapter_weights(tiny_model_dir: Path) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_model_dir),
        LoraConfig(r=4, lora_alpha=8, lora_dropout=0.1, target_modules="all-linear"),
    )
    adapters = sum(
        1
        for m in model.modules()
        if isinstance(getattr(m, "lora_dropout", None), torch.nn.ModuleDict)
    )
    keys_before = set(model.state_dict())
    assert use_gap_dropout(model) == adapters > 0
    assert not any(isinstance(m, torch.nn.Dropout) for m in model.modules())
    assert set(model.state_dict()) == keys_before
    model.train()
    out = model(input_ids=torch.tensor([[1, 2, 3, 4]]), labels=torch.tensor([[1, 2, 3, 4]]))
    out.loss.backward()
    assert any(p.grad is not None for n, p in model.named_parameters() if "lora_A" in n)
