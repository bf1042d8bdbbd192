"""Maps of what a restored run looked at: for one image and one text (a VQA question, a grounding phrase, a caption to
match), the relevance of every image grid cell to each word and to the whole text (`cmvl explain`).

    run = cmvl.load_run("best.ckpt")
    explanation = explain(run, image="photo.jpg", text="What color is the circle?", method="gradcam")
    explanation.title, explanation.words, explanation.word_maps.shape   # 'answer: red (0.97)', [...], W×H×W′
    write_explanation(explanation, "maps/")   # a PNG per word, question.png, maps.npy, maps.json
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from cmvl.atomic_file import atomic_write, write_json_atomic
from cmvl.errors import ConfigError, UserError
from cmvl.explain.maps import METHODS
from cmvl.explain.overlay import overlay_picture
from cmvl.explain.relevance import batch_relevance, encode_for_maps, word_token_mask
from cmvl.explain.targets import check_explainable
from cmvl.inference.inputs import ImageInput, known_token_count, run_images, run_texts
from cmvl.tasks.base import Task

if TYPE_CHECKING:
    from cmvl.run import Run

__all__ = ["METHODS", "Explanation", "explain", "member_task", "write_explanation"]


@dataclass
class Explanation:
    """The maps of one image and text. Maps are on the vision encoder's H×W grid, unnormalised (each method's own
    scale); pictures scale each map to its own range."""

    method: str
    text: str
    title: str  # what the maps explain: the predicted answer, the box, the match
    words: list[str]  # the text's words, as written in it (tokens of one word share a map: their mean)
    word_maps: np.ndarray  # W×H×W′ float32, one per word
    question_map: np.ndarray  # H×W′ float32: the mean over the text's word tokens
    image: np.ndarray  # S×S×3 uint8: the image as the model saw it
    box: list[float] | None = None  # grounding: the predicted box, x0 y0 x1 y1 in [0, 1]


def member_task(task: Task, name: str | None) -> Task:
    """The task whose output is explained: `task` itself, or the member `name` of a multitask."""
    members = {t.name: t for t in task.members()}
    if name is None:
        if len(members) > 1:
            raise ConfigError(f"this checkpoint is a multitask ({', '.join(members)}): choose one with task=<name>")
        return task
    if name not in members:
        raise ConfigError(f"task={name}: this checkpoint's task(s): {', '.join(members)}")
    return members[name]


def explain(run: Run, *, image: ImageInput, text: str, method: str = "gradcam", task: str | None = None) -> Explanation:
    """The `method` maps (`METHODS`) of `run`'s model for `image` and `text`; `UserError` (one line) for an empty
    text, one the tokenizer knows nothing of, a method the fusion has no maps for, or a task without maps."""
    if method not in METHODS:
        raise ConfigError(f"method={method}: choose one of {', '.join(METHODS)}")
    explained = member_task(run.task, task)
    check_explainable(explained)
    if not text.strip():
        raise UserError("the text to explain is empty (give a question, phrase or caption)")
    if known_token_count(run, text) == 0:
        raise UserError(f"{text!r}: the checkpoint's tokenizer knows none of its words")
    pixels = run_images(run, [image])
    input_ids, attention_mask = run_texts(run, [text])
    model, device = run.model, run.device
    vision, tokens = encode_for_maps(model, pixels.to(device), input_ids.to(device), attention_mask.to(device))
    special = list(run.tokenizer.all_special_ids)
    words_mask = word_token_mask(input_ids, attention_mask, special)
    maps = batch_relevance(explained, model, vision, tokens, words_mask, method)
    words, word_maps = _word_maps(run, text, maps.token_maps[0].float().cpu().numpy(), words_mask[0].tolist())
    box = maps.output.boxes[0].tolist() if maps.output.boxes is not None else None
    return Explanation(
        method=method,
        text=text,
        title=maps.output.titles[0],
        words=words,
        word_maps=word_maps,
        question_map=maps.question_maps[0].float().cpu().numpy(),
        image=pixels[0].permute(1, 2, 0).numpy(),
        box=box,
    )


def _word_maps(run: Run, text: str, token_maps: np.ndarray, is_word: list[bool]) -> tuple[list[str], np.ndarray]:
    """The text's words (the tokenizer's word boundaries, as written) and the mean map of each word's tokens."""
    encoded = run.tokenizer(
        text, truncation=True, max_length=int(run.config.text.max_length), return_offsets_mapping=True
    )
    spans: dict[int, list[int]] = {}
    for position, (word, keep) in enumerate(zip(encoded.word_ids(), is_word)):
        if word is not None and keep:
            spans.setdefault(word, []).append(position)
    offsets = encoded["offset_mapping"]
    words = [text[offsets[p[0]][0] : offsets[p[-1]][1]] for p in spans.values()]
    stacked = [token_maps[p].mean(axis=0) for p in spans.values()]
    grid = token_maps.shape[1:]
    return words, np.stack(stacked).astype(np.float32) if stacked else np.zeros((0, *grid), np.float32)


def write_explanation(explanation: Explanation, out_dir: str | Path) -> list[Path]:
    """`question.png` (the whole text), `word<NN>_<word>.png` per word, `maps.npy` ((1 + W)×H×W′: the whole text's
    map, then each word's) and `maps.json` (method, text, title, words, files) into `out_dir`. Every picture is
    drawn before the first file is written; each file is written whole or not at all."""
    out = Path(out_dir)
    head = f"{explanation.method} · {explanation.title}"
    pictures = {
        "question.png": overlay_picture(
            explanation.image, explanation.question_map, f"{head}\nwhole text: {explanation.text}", explanation.box
        )
    }
    for k, (word, word_map) in enumerate(zip(explanation.words, explanation.word_maps)):
        name = f"word{k:02d}_{re.sub(r'[^A-Za-z0-9]+', '_', word).strip('_') or 'token'}.png"
        pictures[name] = overlay_picture(explanation.image, word_map, f"{head}\nword: {word!r}", explanation.box)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, picture in pictures.items():
        with atomic_write(out / name, "wb") as f:
            picture.save(f, format="PNG")
        written.append(out / name)
    stacked = np.concatenate([explanation.question_map[None], explanation.word_maps]).astype(np.float32)
    with atomic_write(out / "maps.npy", "wb") as f:
        np.save(f, stacked)
    record = {
        "method": explanation.method,
        "text": explanation.text,
        "title": explanation.title,
        "maps_npy": ["whole text", *explanation.words],
        "pictures": [p.name for p in written],
        "box_xyxy": explanation.box,
    }
    write_json_atomic(out / "maps.json", record)
    return [*written, out / "maps.npy", out / "maps.json"]
