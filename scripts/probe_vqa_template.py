"""Diagnostic: train the real VQA pipeline on the questions of one template only and print val accuracy.

Isolates one skill (e.g. counting) from the multi-question mixture, and compares the task's MLP answer head with a
linear head on the same pooled vector. Usage:

    .venv/bin/python scripts/probe_vqa_template.py --template "How many shapes" --head mlp --steps 300
    .venv/bin/python scripts/probe_vqa_template.py --template "How many shapes" --head linear --steps 300
"""

from __future__ import annotations

import argparse

import pyarrow.compute as pc
import torch

from cmvl.config.compose import compose_config
from cmvl.training.build import build_datamodule, build_lit_module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--template", required=True, help="substring that selects the questions")
    parser.add_argument("--head", choices=("mlp", "linear"), default="mlp")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--lr", type=float, default=2e-3)
    args, overrides = parser.parse_known_args()
    torch.manual_seed(0)
    cfg = compose_config(["data.num_workers=0", "paths.output_dir=/tmp/cmvl-probe", *overrides])
    datamodule = build_datamodule(cfg)
    for split in ("train", "val"):
        table = datamodule.table("qa", split)
        datamodule._tables["qa", split] = table.filter(pc.match_substring(table.column("question"), args.template))
    datamodule.prepare()
    lit = build_lit_module(cfg, datamodule)
    model, task = lit.model, lit.task
    if args.head == "linear":
        model.heads[task.name] = torch.nn.Linear(cfg.model.dim, len(task.answers))
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)
    val_batches = list(datamodule.eval_dataloaders("val")["vqa"])
    print(
        f"{datamodule.table('qa', 'train').num_rows} train / {datamodule.table('qa', 'val').num_rows} val questions, "
        f"{len(task.answers)} answers, head={args.head}"
    )
    step = 0
    while step < args.steps:
        for batch in datamodule.train_dataloader():
            loss = task.loss(task.forward(model, batch), batch)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
            if step % max(1, args.steps // 4) == 0:
                model.eval()
                metric = task.make_metric()
                with torch.no_grad():
                    for vb in val_batches:
                        task.update_metric(metric, task.forward(model, vb), vb)
                model.train()
                print(f"step {step:5d}  loss {loss.item():.3f}  val acc {float(metric.compute()['acc']):.3f}")
            if step >= args.steps:
                break


if __name__ == "__main__":
    main()
