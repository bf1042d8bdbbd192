"""`cmvl predict ckpt=PATH image=FILE [question=TEXT | phrase=TEXT] [key=value ...]`: a trained model on the user's
own images, one (printed) or many (`input=requests.jsonl` / `images=DIR`, written as JSON lines)."""

from __future__ import annotations

import json
from typing import Any

from cmvl.cli.args import Option, Spec, choice, integer, parse, path, probability, wants_help
from cmvl.errors import ConfigError

PREDICT = Spec(
    "predict",
    """Restores the run from the checkpoint alone (no dataset is read) and predicts with its task: VQA answers with
their probabilities, a caption, tags with scores, a phrase's box. One image= prints the result; input=FILE.jsonl
(one {"image": ..., "question"/"phrase": ...} per line; image paths relative to the file's folder) or images=DIR
(every image under it, with the question= / phrase= given) writes one JSON record per request to out=.""",
    (
        Option("ckpt", "the checkpoint to predict with", path, metavar="PATH"),
        Option("image", "one image file to predict on (prints the result)", path, None, "FILE"),
        Option("input", "a JSON-lines file of requests (image + question / phrase)", path, None, "JSONL"),
        Option(
            "images", "a folder: every image file under it, each with the question= / phrase= given", path, None, "DIR"
        ),
        Option("question", "the question (VQA)", str, None, "TEXT"),
        Option("phrase", "the phrase whose box to find (grounding)", str, None, "TEXT"),
        Option(
            "task",
            "which task of a multitask checkpoint answers (vqa, caption, tagging, grounding, ...)",
            str,
            None,
            "NAME",
        ),
        Option("top_k", "VQA: how many answers to list, most probable first", integer(1), 5, "K"),
        Option(
            "threshold", "tagging: the score from which a label is given (default: the run's)", probability, None, "P"
        ),
        Option("beam_size", "captioning / generative VQA: beam width (default: the run's)", integer(1), None, "N"),
        Option("out", "JSON-lines file of the records (default: printed)", path, None, "JSONL"),
        Option("draw", "grounding with image=: the image with the predicted box, as a PNG", path, None, "PNG"),
        Option("batch_size", "requests per forward pass", integer(1), 64, "N"),
        Option("num_workers", "processes decoding images (default: the run's data.num_workers)", integer(0), None, "N"),
        Option("device", "where the model runs: cpu, cuda, cuda:1, mps", str, "cpu", "DEVICE"),
        Option("precision", "32, or bf16 (bfloat16 autocast, on CPU too)", choice(("32", "bf16")), "32", "32|bf16"),
        Option(
            "on_error",
            "stop: a bad request ends it in one line; skip: its record holds the error",
            choice(("stop", "skip")),
            "stop",
            "stop|skip",
        ),
    ),
    overrides="overrides of the checkpoint's config (evaluation options; extra_target_prefixes=[mypkg])",
    epilog="""Examples:
  cmvl predict ckpt=best.ckpt image=photo.jpg question="What color is the circle?" top_k=3
  cmvl predict ckpt=best.ckpt image=photo.jpg task=grounding phrase="the red circle" draw=box.png
  cmvl predict ckpt=best.ckpt input=requests.jsonl out=predictions.jsonl batch_size=64 on_error=skip
  cmvl predict ckpt=best.ckpt images=photos/ task=caption out=captions.jsonl""",
)


def predict_command(args: list[str]) -> None:
    if wants_help(args):
        print(PREDICT.help())
        return
    parsed = parse(PREDICT, args)
    sources = [key for key in ("image", "input", "images") if parsed[key] is not None]
    if len(sources) != 1:
        given = f"got {' and '.join(k + '=' for k in sources)}" if sources else "got none"
        raise ConfigError(f"predict: give one of image=FILE, input=FILE.jsonl or images=DIR ({given})")
    if parsed["draw"] is not None and parsed["image"] is None:
        raise ConfigError("predict: draw= draws the box of one image=; a batch's boxes are in its out= records")
    if parsed["input"] is not None and (parsed["question"] is not None or parsed["phrase"] is not None):
        raise ConfigError("predict: with input= each JSON line carries its question / phrase; leave question= out")
    from cmvl.config.writable import check_writable_dir

    for key in ("out", "draw"):
        if parsed[key] is not None:
            if parsed[key].is_dir():
                raise ConfigError(f"predict: {key}={parsed[key]} is a folder; give a file name")
            check_writable_dir(parsed[key].parent, f"predict {key}=")
    _predict(parsed.values, parsed.overrides)


def _predict(keys: dict[str, Any], overrides: list[str]) -> None:
    from cmvl.data.workers import resolve_num_workers
    from cmvl.inference.drawing import draw_box
    from cmvl.inference.predict import PredictSettings, predict_requests
    from cmvl.inference.requests import Request, folder_requests, read_jsonl
    from cmvl.run import load_run
    from cmvl.tasks.prediction import BoxResult, PredictOptions

    texts = {name: keys[name] for name in ("question", "phrase") if keys[name] is not None}
    if keys["image"] is not None:
        requests = [Request(keys["image"], texts, fields={"image": str(keys["image"]), **texts})]
    elif keys["input"] is not None:
        requests = read_jsonl(keys["input"])
    else:
        requests = folder_requests(keys["images"], texts=texts)
    run = load_run(keys["ckpt"], device=keys["device"], overrides=overrides)
    workers = keys["num_workers"]
    if workers is None:
        workers = resolve_num_workers(run.config.data.num_workers, accelerator=run.config.trainer.accelerator)
    settings = PredictSettings(
        task=keys["task"],
        options=PredictOptions(top_k=keys["top_k"], threshold=keys["threshold"], beam_size=keys["beam_size"]),
        batch_size=keys["batch_size"],
        precision=keys["precision"],
        on_error="stop" if keys["image"] is not None else keys["on_error"],
        num_workers=0 if keys["image"] is not None else workers,
    )
    results = predict_requests(run, requests, settings, progress=keys["image"] is None)
    if keys["image"] is not None:
        result = results[0]
        if keys["draw"] is not None:
            if not isinstance(result, BoxResult):
                raise ConfigError(f"predict: draw= draws a grounding box; task={result.task} gives none")
            print(f"drawn: {draw_box(keys['image'], result, keys['draw'])}")
        print("\n".join(result.lines()))
    records = [{**getattr(r, "fields", {}), **result.to_json()} for r, result in zip(requests, results)]
    if keys["out"] is not None:
        from cmvl.atomic_file import atomic_write

        with atomic_write(keys["out"]) as f:
            f.writelines(json.dumps(record) + "\n" for record in records)
        failed = sum("error" in record for record in records)
        print(f"predictions ({len(records)}, {failed} failed): {keys['out']}")
    elif keys["image"] is None:
        print("\n".join(json.dumps(record) for record in records))
