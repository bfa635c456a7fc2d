"""The small training loop of the head and the gate: tensors in memory, minutes at most."""

from __future__ import annotations

from collections.abc import Callable

import torch
from tqdm.auto import trange


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return (logits.argmax(-1) == labels).float().mean().item() if len(labels) else float("nan")


def fit_on_tensors(
    module: torch.nn.Module,
    inputs: tuple[torch.Tensor, ...],
    labels: torch.Tensor,
    loss_fn: Callable[..., torch.Tensor],
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    seed: int,
    description: str,
    on_epoch: Callable[[dict], None] | None = None,
) -> list[dict]:
    """Adam on shuffled mini-batches; `loss_fn(outputs, batch_index)` gives the loss.

    Returns one record per epoch with the mean training loss and accuracy, each also handed
    to `on_epoch` as it is made (a tracker, say).
    """
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(module.parameters(), lr=lr, weight_decay=weight_decay)
    history = []
    module.train()
    for epoch in trange(epochs, desc=description, leave=False):
        order = torch.randperm(len(labels), generator=generator)
        total_loss, correct = 0.0, 0
        for start in range(0, len(order), batch_size):
            index = order[start : start + batch_size]
            outputs = module(*(tensor[index] for tensor in inputs))
            loss = loss_fn(outputs, index)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total_loss += loss.item() * len(index)
            correct += (outputs.argmax(-1) == labels[index]).sum().item()
        history.append(
            {"epoch": epoch + 1, "loss": total_loss / len(labels), "train_accuracy": correct / len(labels)}
        )
        if on_epoch is not None:
            on_epoch(history[-1])
    module.eval()
    return history
