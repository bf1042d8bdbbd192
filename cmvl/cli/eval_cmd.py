"""`cmvl eval ckpt=PATH [out=DIR] [key=value ...]`."""

from __future__ import annotations

from cmvl.errors import UserError

HELP = """usage: cmvl eval ckpt=PATH [out=DIR] [key=value ...]

Rebuilds the model, tokenizer, answer vocabulary and data from the checkpoint alone and evaluates one split.
Writes metrics.json and the predictions in the task's official results format (VQA: [{"question_id", "answer"}])
next to the checkpoint, or into out=DIR. Overrides apply to the checkpoint's config, e.g.
  dataset.split=test     score the test split (splits without annotations only get predictions)
  dataset.root=/data/x   read the data from another place
  data.num_workers=0
  task.beam_size=5       a task's evaluation option (decoding, re-ranking, scoring thresholds)
Overrides that change the model (model.*, vision.*, text.*, fusion.*), the task or only training are refused."""


def eval_command(args: list[str]) -> None:
    if any(a in ("-h", "--help") for a in args):
        print(HELP)
        return
    options, overrides = {}, []
    for arg in args:
        key, sep, value = arg.partition("=")
        if not sep:
            raise UserError(f"expected key=value, got '{arg}' (see cmvl eval --help)")
        if key in ("ckpt", "out"):
            options[key] = value
        else:
            overrides.append(arg)
    if "ckpt" not in options:
        raise UserError("missing ckpt=PATH (the checkpoint to evaluate)")
    if "out" in options:
        from cmvl.config.writable import check_writable_dir

        check_writable_dir(options["out"], "out=")
    from cmvl.evaluation import evaluate_checkpoint

    result = evaluate_checkpoint(options["ckpt"], overrides=overrides, out_dir=options.get("out"))
    for key, value in result["metrics"].items():
        print(f"{key} = {value:.6f}")
    files, counts = result["predictions_file"], result["num_predictions"]
    if isinstance(files, dict):  # a multitask: one file per task
        for name, path in files.items():
            print(f"predictions {name} ({counts[name]}): {path}")
    else:
        print(f"predictions ({counts}): {files}")
