"""`cmvl explain ckpt=PATH image=FILE question=TEXT [method=gradcam] out=DIR`."""

from __future__ import annotations

from cmvl.cli.args import Option, Spec, parse, path, wants_help
from cmvl.errors import UserError

# The text input of each task with maps, by the key it is given with (as `cmvl predict` names them).
TEXT_KEYS = {"vqa": "question", "grounding": "phrase", "retrieval": "caption"}

EXPLAIN = Spec(
    "explain",
    """Maps of what a trained model looked at to answer (VQA), to place its box (grounding) or to score a match
(retrieval with task.itm=true): one PNG per word of the text and question.png for the whole text (the heat map on
the image, the predicted answer / box / match in the title), and maps.npy (the whole text's map, then each word's,
on the vision encoder's grid) with maps.json naming them.""",
    (
        Option("ckpt", "the checkpoint", path, metavar="PATH"),
        Option("image", "the image file", path, metavar="FILE"),
        Option("out", "the folder for the pictures and maps.npy", path, metavar="DIR"),
        Option("question", "the question (a VQA checkpoint)", str, None, "TEXT"),
        Option("phrase", "the phrase to place (a grounding checkpoint)", str, None, "TEXT"),
        Option(
            "caption", "the caption to match (a retrieval checkpoint trained with task.itm=true)", str, None, "TEXT"
        ),
        Option(
            "method",
            "gradcam: Grad-CAM on the text→image attention; attention: its raw weights; rollout: attention rollout "
            "(single-stream fusion=merged)",
            str,
            "gradcam",
            "attention|gradcam|rollout",
        ),
        Option("task", "the member of a multitask checkpoint to explain", str, None, "NAME"),
        Option("device", "where the model runs: cpu, cuda, cuda:<index>, mps", str, "cpu", "DEVICE"),
    ),
)


def explain_command(args: list[str]) -> None:
    if wants_help(args):
        print(EXPLAIN.help())
        return
    parsed = parse(EXPLAIN, args)
    from cmvl.config.writable import check_writable_dir
    from cmvl.inference.explain import METHODS, explain, member_task, write_explanation

    if parsed["method"] not in METHODS:
        raise UserError(f"explain: method={parsed['method']}: choose one of {', '.join(METHODS)}")
    given = [key for key in TEXT_KEYS.values() if parsed[key] is not None]
    if len(given) != 1:
        raise UserError("explain: give the text as one of question=, phrase= (grounding) or caption= (retrieval)")
    if not parsed[given[0]].strip():
        raise UserError(f"explain: {given[0]}= is empty")
    if not parsed["image"].is_file():
        raise UserError(f"explain: image={parsed['image']}: no such file")
    check_writable_dir(parsed["out"], "out=")
    from cmvl.run import load_run

    run = load_run(parsed["ckpt"], device=parsed["device"])
    explained = member_task(run.task, parsed["task"])
    wanted = TEXT_KEYS.get(explained.name)
    if wanted is not None and given[0] != wanted:
        raise UserError(f"explain: a {explained.name} checkpoint takes {wanted}=, not {given[0]}=")
    explanation = explain(
        run, image=parsed["image"], text=parsed[given[0]], method=parsed["method"], task=parsed["task"]
    )
    written = write_explanation(explanation, parsed["out"])
    print(f"{explanation.method}: {explanation.title}")
    print(f"{len(written) - 2} pictures, maps.npy and maps.json in {parsed['out']}")
