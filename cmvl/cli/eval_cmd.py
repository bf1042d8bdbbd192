"""`cmvl eval ckpt=PATH [out=DIR] [key=value ...]`."""

from __future__ import annotations

from cmvl.cli.args import Option, Spec, parse, path, wants_help

EVAL = Spec(
    "eval",
    """Rebuilds the model, tokenizer, answer vocabulary and data from the checkpoint alone and evaluates one split.
Writes metrics.json and the predictions in the task's official results format (VQA: [{"question_id", "answer"}])
next to the checkpoint, or into out=DIR.""",
    (
        Option("ckpt", "the checkpoint to evaluate", path, metavar="PATH"),
        Option(
            "out", "folder for metrics.json and the predictions (default: the checkpoint's folder)", path, None, "DIR"
        ),
    ),
    overrides="overrides of the checkpoint's config (below)",
    epilog="""Overrides apply to the checkpoint's config, e.g.
  dataset.split=test     score the test split (splits without annotations only get predictions)
  dataset.root=/data/x   read the data from another place
  data.num_workers=0
  task.beam_size=5       a task's evaluation option (decoding, re-ranking, scoring thresholds)
Overrides that change the model (model.*, vision.*, text.*, fusion.*), the task or only training are refused.
Robust accuracy (VQA, tagging, classification): the split scored again with each batch attacked, reported as
<metric>/<attack> (val/vqa/acc/pgd):
  attack=pgd attack.eps=2/255 [attack.steps=10 attack.step_size=X attack.seed=0]   L-inf PGD on the pixels
  attack=fgsm attack.eps=2/255      one signed-gradient step
  attack=embedding attack.eps=1.0   the adversarial-training perturbation of the fusion inputs (L2 per sample)
Zero-shot classification with a retrieval checkpoint (class embeddings averaged over prompt templates):
  task=zeroshot classes=[circle,square,triangle] templates=builtin|FILE [dataset=image_folder dataset.root=DIR]""",
)


def eval_command(args: list[str]) -> None:
    if wants_help(args):
        print(EVAL.help())
        return
    parsed = parse(EVAL, args)
    if parsed["out"] is not None:
        from cmvl.config.writable import check_writable_dir

        check_writable_dir(parsed["out"], "out=")
    from cmvl.evaluation import evaluate_checkpoint
    from cmvl.evaluation.zeroshot import evaluate_zeroshot, is_zeroshot

    evaluate = evaluate_zeroshot if is_zeroshot(parsed.overrides) else evaluate_checkpoint
    result = evaluate(parsed["ckpt"], overrides=parsed.overrides, out_dir=parsed["out"])
    for key, value in result["metrics"].items():
        print(f"{key} = {value:.6f}")
    files, counts = result["predictions_file"], result["num_predictions"]
    if isinstance(files, dict):  # a multitask: one file per task
        for name, path in files.items():
            print(f"predictions {name} ({counts[name]}): {path}")
    else:
        print(f"predictions ({counts}): {files}")
