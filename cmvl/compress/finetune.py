"""A short fine-tune of a pruned model on its run's training split (AdamW at the run's peak learning rate, no
schedule), so the remaining weights make up for the removed ones."""

from __future__ import annotations

from itertools import islice

import torch

from cmvl.progress import track
from cmvl.run import Run


def finetune(run: Run, model: torch.nn.Module, *, epochs: int, max_batches: int | None = None) -> None:
    """Trains `model` (the run's model, pruned) for `epochs` passes over the run's training split (at most
    `max_batches` batches each; None: all), in place."""
    from cmvl.training.build import build_datamodule

    datamodule = build_datamodule(run.config, task=run.task, tokenizer=run.tokenizer)
    loader = datamodule.train_dataloader()
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=float(run.config.optim.optimizer.lr)
    )
    model.train()
    for epoch in range(epochs):
        total = len(loader) if max_batches is None else min(max_batches, len(loader))
        for batch in track(islice(loader, total), total=total, description=f"fine-tune epoch {epoch + 1}/{epochs}"):
            loss = run.task.loss(run.task.forward(model, batch), batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    model.eval()
