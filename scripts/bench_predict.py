"""Prediction speed and agreement against evaluation, on a VQA checkpoint's validation split, all in one process:

- `cmvl eval`'s scoring of the split (`score_split`: the data module, Lightning's test loop);
- `cmvl predict` on the same (image file, question) rows (`predict_requests`, batch size `--batch-size`);
- a plain-library reference: PIL decode (each image once) + torchvision resize + the tokenizer + the same model,
  batch by batch in the table's order, with nothing of cmvl's (the least work any implementation must do);

printed as milliseconds per question and ratios, with the share of answers predict gives as evaluation does and
as batch size 1 does (mismatches outside near-ties, top-two gap < 1e-4, must be 0). Usage:

    .venv/bin/python scripts/bench_predict.py --ckpt outputs/<date>/<time>-<hex>/checkpoints/best.ckpt
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

NEAR_TIE = 1e-4


def timed(function, repeats: int):
    """The result of `function()` and its best wall time over `repeats` calls (the first warms caches too)."""
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        best = min(best, time.perf_counter() - start)
    return result, best


def plain_reference(run, rows: list[tuple[Path, str]], batch_size: int) -> list[str]:
    """Answers by PIL, torchvision and the model alone (no cmvl batching, grouping or checks)."""
    from PIL import Image, ImageOps
    from torchvision.transforms import v2 as T

    size = int(run.config.data.image.size)
    resize = T.Compose([T.PILToTensor(), T.Resize((size, size), antialias=True)])
    head = run.model.heads[run.task.name]
    answers, decoded = [], {}
    with torch.inference_mode():
        for start in range(0, len(rows), batch_size):
            chunk = rows[start : start + batch_size]
            distinct = list(dict.fromkeys(path for path, _ in chunk))  # each image decoded and encoded once
            for path in distinct:
                if path not in decoded:
                    decoded[path] = resize(ImageOps.exif_transpose(Image.open(path)).convert("RGB"))
            images = torch.stack([decoded[path] for path in distinct])
            tokens = run.tokenizer(
                [q for _, q in chunk],
                padding=True,
                truncation=True,
                max_length=int(run.config.text.max_length),
                return_tensors="pt",
            )
            index = torch.tensor([distinct.index(path) for path, _ in chunk])
            fused = run.model(images, tokens["input_ids"], tokens["attention_mask"], index)
            answers += [run.task.answers[j] for j in head(fused.pooled).argmax(1).tolist()]
    return answers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", type=Path, required=True, help="a VQA checkpoint (its validation split is read)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=0, help="image-decoding processes, predict and eval alike")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import cmvl
    from cmvl.evaluation.score import score_split
    from cmvl.predict.pipeline import PredictSettings, predict_requests
    from cmvl.predict.requests import Request
    from cmvl.training.build import build_source

    overrides = [f"data.num_workers={args.workers}", f"data.eval_batch_size={args.batch_size}"]
    run = cmvl.load_run(args.ckpt, overrides=overrides)
    run.config.trainer.enable_progress_bar = False
    split = str(run.config.dataset.split)
    source = build_source(run.config)
    table = source.table("qa", split)
    rows = [
        (source.image_root / image, question)
        for image, question in zip(table.column("image").to_pylist(), table.column("question").to_pylist())
    ]
    ids = table.column("question_id").to_pylist()
    requests = [Request(path, {"question": question}) for path, question in rows]
    settings = PredictSettings(batch_size=args.batch_size, num_workers=args.workers)

    scores, eval_s = timed(lambda: score_split(run, split), args.repeats)
    predicted, predict_s = timed(lambda: predict_requests(run, requests, settings), args.repeats)
    plain, plain_s = timed(lambda: plain_reference(run, rows, args.batch_size), args.repeats)
    one_by_one = predict_requests(run, requests, PredictSettings(batch_size=1))

    evaluated = {p["question_id"]: p["answer"] for p in scores.predictions[run.task.name]}
    near = [r.answers[0].score - r.answers[1].score < NEAR_TIE for r in predicted]
    as_eval = sum(r.answer == evaluated[q] for r, q in zip(predicted, ids))
    off_eval = sum(r.answer != evaluated[q] and not n for r, q, n in zip(predicted, ids, near))
    off_batch = sum(a.answer != b.answer and not n for a, b, n in zip(predicted, one_by_one, near))
    as_plain = sum(r.answer == p for r, p in zip(predicted, plain))
    n = len(rows)
    images = len({str(p) for p, _ in rows})
    print(
        f"{args.ckpt}: split {split}, {n} questions on {images} images, batch size {args.batch_size}, "
        f"{args.workers} decoding workers, {torch.get_num_threads()} torch threads, best of {args.repeats}"
    )
    for name, seconds in [("cmvl eval (score_split)", eval_s), ("cmvl predict", predict_s), ("plain PyTorch", plain_s)]:
        print(f"  {name:<24} {seconds:7.2f} s   {1000 * seconds / n:7.3f} ms/question")
    print(f"  predict / eval  = {predict_s / eval_s:.2f}x   predict / plain = {predict_s / plain_s:.2f}x")
    print(
        f"  answers as eval: {as_eval}/{n} ({off_eval} outside near-ties); as plain: {as_plain}/{n}; "
        f"batch 1 vs {args.batch_size}: {off_batch} differ outside near-ties; near-ties: {sum(near)}"
    )


if __name__ == "__main__":
    main()
