"""`cmvl predict ckpt=PATH image=FILE [question=TEXT | phrase=TEXT | queries=A,B] [key=value ...]`: a trained model
on the user's own images, one (printed) or many (`input=requests.jsonl` / `images=DIR`, written as JSON lines)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cmvl.cli.args import Option, Spec, choice, integer, parse, path, probability, text_list, wants_help
from cmvl.errors import ConfigError

PREDICT = Spec(
    "predict",
    """Restores the run from the checkpoint alone (no dataset is read) and predicts with its task: VQA answers with
their probabilities, a caption, tags with scores, a phrase's box, detected boxes of text queries, the most probable
classes. One image= prints the result; input=FILE.jsonl (one {"image": ..., "question"/"phrase"/"queries": ...} per
line; image paths relative to the file's folder) or images=DIR (every image under it, with the question= / phrase= /
queries= given) writes one JSON record per request to out=.""",
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
            "prompt",
            "generation: the text to draw an image of (no image=; the images go to out=DIR)",
            str,
            None,
            "TEXT",
        ),
        Option("seed", "generation: the seed of the noise every image starts from", integer(0, 2**63 - 1), 0, "S"),
        Option("query", "detection: one text to find (default: the checkpoint's queries)", str, None, "TEXT"),
        Option("queries", "detection: texts to find, comma-separated (a,b or [a,b])", text_list, None, "A,B"),
        Option(
            "task",
            "which task of a multitask checkpoint answers (vqa, caption, tagging, grounding, ...)",
            str,
            None,
            "NAME",
        ),
        Option(
            "top_k",
            "how many answers (VQA, default 5), classes (default task.top_k) or boxes (default task.max_detections) "
            "to list, best first",
            integer(1),
            None,
            "K",
        ),
        Option(
            "threshold",
            "tagging / detection: the score from which a label / box is given (default: task.threshold / "
            "task.sample_threshold)",
            probability,
            None,
            "P",
        ),
        Option("beam_size", "captioning / generative VQA: beam width (default: the run's)", integer(1), None, "N"),
        Option(
            "out",
            "JSON-lines file of the records (default: printed); generation: the folder of the PNGs and their records",
            path,
            None,
            "JSONL|DIR",
        ),
        Option("draw", "grounding / detection with image=: the image with its boxes, as a PNG", path, None, "PNG"),
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
  cmvl predict ckpt=best.ckpt image=photo.jpg queries="red circle,blue square" threshold=0.3 draw=boxes.png
  cmvl predict ckpt=best.ckpt input=requests.jsonl out=predictions.jsonl batch_size=64 on_error=skip
  cmvl predict ckpt=best.ckpt images=photos/ task=caption out=captions.jsonl
  cmvl predict ckpt=generator.ckpt prompt="a red circle left of a blue square" seed=3 out=drawn/""",
)


def predict_command(args: list[str]) -> None:
    if wants_help(args):
        print(PREDICT.help())
        return
    parsed = parse(PREDICT, args)
    sources = [key for key in ("image", "input", "images") if parsed[key] is not None]
    if len(sources) != 1 and not (not sources and parsed["prompt"] is not None):  # a prompt alone: a generator's
        given = f"got {' and '.join(k + '=' for k in sources)}" if sources else "got none"
        raise ConfigError(
            f"predict: give one of image=FILE, input=FILE.jsonl or images=DIR, or a generator's prompt=TEXT ({given})"
        )
    if parsed["draw"] is not None and parsed["image"] is None:
        raise ConfigError("predict: draw= draws the box of one image=; a batch's boxes are in its out= records")
    given = [key for key in ("question", "phrase", "prompt", "query", "queries") if parsed[key] is not None]
    if parsed["input"] is not None and given:
        raise ConfigError(
            f"predict: with input= each JSON line carries its question / phrase / queries; leave {given[0]}= out"
        )
    if parsed["query"] is not None and parsed["queries"] is not None:
        raise ConfigError("predict: give query=TEXT or queries=A,B, not both")
    from cmvl.config.writable import check_writable_dir

    for key in ("out", "draw"):
        if parsed[key] is not None:
            if key == "draw" and parsed[key].is_dir():
                raise ConfigError(f"predict: {key}={parsed[key]} is a folder; give a file name")
            check_writable_dir(parsed[key].parent, f"predict {key}=")
    _predict(parsed.values, parsed.overrides)


def _predict(keys: dict[str, Any], overrides: list[str]) -> None:
    from cmvl.data.workers import resolve_num_workers
    from cmvl.inference.drawing import draw_boxes
    from cmvl.predict.pipeline import PredictSettings, predict_requests, predicting_task
    from cmvl.predict.requests import Request, folder_requests, read_jsonl
    from cmvl.run import load_run
    from cmvl.tasks.prediction import PredictOptions

    texts = {name: keys[name] for name in ("question", "phrase", "prompt") if keys[name] is not None}
    queries = keys["queries"] or ((keys["query"],) if keys["query"] is not None else ())
    single = keys["input"] is None and keys["images"] is None  # one image=, or one generator's prompt=
    if keys["image"] is None and single:
        requests = [Request(None, texts, fields=dict(texts))]
    elif keys["image"] is not None:
        requests = [Request(keys["image"], texts, fields={"image": str(keys["image"]), **texts}, queries=queries)]
    elif keys["input"] is not None:
        requests = read_jsonl(keys["input"])
    else:
        requests = folder_requests(keys["images"], texts=texts, queries=queries)
    run = load_run(keys["ckpt"], device=keys["device"], overrides=overrides)
    drawing = not predicting_task(run, keys["task"]).predict_reads_image  # generation: PNGs into the out= folder
    out = keys["out"]
    if drawing and out is None:
        raise ConfigError("predict: a generator draws images: give out=DIR, the folder to write them to")
    if out is not None and out.exists() and out.is_dir() != drawing:
        wanted = "a folder for the images it draws" if drawing else "a file name"
        raise ConfigError(f"predict: out={out} is {'a file' if drawing else 'a folder'}; give {wanted}")
    workers = keys["num_workers"]
    if workers is None:
        workers = resolve_num_workers(run.config.data.num_workers, accelerator=run.config.trainer.accelerator)
    settings = PredictSettings(
        task=keys["task"],
        options=PredictOptions(
            top_k=keys["top_k"], threshold=keys["threshold"], beam_size=keys["beam_size"], seed=keys["seed"]
        ),
        batch_size=keys["batch_size"],
        precision=keys["precision"],
        on_error="stop" if single else keys["on_error"],
        num_workers=0 if single else workers,
    )
    results = predict_requests(run, requests, settings, progress=not single)
    if drawing:
        results = write_drawn(results, out)
        out = out / "predictions.jsonl"
    if single:
        result = results[0]
        if keys["draw"] is not None:
            boxes = result.drawn_boxes()
            if boxes is None:
                raise ConfigError(f"predict: draw= draws boxes (grounding, detection); task={result.task} gives none")
            print(f"drawn: {draw_boxes(keys['image'], boxes, keys['draw'])}")
        print("\n".join(result.lines()))
    records = [{**getattr(r, "fields", {}), **result.to_json()} for r, result in zip(requests, results)]
    if out is not None:
        from cmvl.atomic_file import atomic_write

        with atomic_write(out) as f:
            f.writelines(json.dumps(record) + "\n" for record in records)
        failed = sum("error" in record for record in records)
        print(f"predictions ({len(records)}, {failed} failed): {out}")
    elif not single:
        print("\n".join(json.dumps(record) for record in records))


def write_drawn(results: list, folder: Path) -> list:
    """`results` with each generated image written to `folder` as `<request number>.png` (atomically) and its
    path in the result (relative to the folder, as the records name it)."""
    import dataclasses

    from cmvl.atomic_file import atomic_write
    from cmvl.tasks.prediction import GeneratedImage

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for k, result in enumerate(results):
        if isinstance(result, GeneratedImage):
            with atomic_write(folder / f"{k:06d}.png", "wb") as f:
                result.image.save(f, format="PNG")
            result = dataclasses.replace(result, path=f"{k:06d}.png")
        written.append(result)
    return written
