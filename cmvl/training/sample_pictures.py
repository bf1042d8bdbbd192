"""Drawing the per-epoch sample pictures (`cmvl.training.samples.SamplePredictions`): which samples are shown (spread
over distinct images), each image framed by how its prediction scored, its relevance map over it where
`samples.attention` is on, and a legend for the frames and the tasks' own marks."""

from __future__ import annotations

import textwrap

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from cmvl.batch import Batch
from cmvl.errors import ConfigError
from cmvl.explain.maps import FUSIONS_WITH_MAPS, RecordedAttention
from cmvl.explain.overlay import heat_over
from cmvl.explain.relevance import batch_relevance, encode_for_maps, word_token_mask
from cmvl.explain.targets import EXPLAINED_TASKS, check_explainable
from cmvl.models.families.vl_fusion import VisionLanguageModel
from cmvl.tasks.base import VERDICT_COLOURS, SampleNote, Task

CELL = 192  # pixels per image side in the picture
COLUMNS = 4
LINE_HEIGHT = 13
FONT_SIZE = 11
FRAME = 3  # width of the verdict frame around an image
SAMPLE_MAP_METHOD = "gradcam"  # the maps samples.attention draws (cmvl explain's default)


def spread_over_images(notes: list[SampleNote], count: int) -> list[SampleNote]:
    """`count` of `notes`: first one per distinct image (in batch order), then the others in order. A validation
    batch groups the rows of an image together (VQA: 5 questions per image), so the first `count` rows would show
    count/5 images."""
    seen: set[int] = set()
    first, rest = [], []
    for note in notes:
        (rest if note.image_row in seen else first).append(note)
        seen.add(note.image_row)
    return (first + rest)[:count]


def _to_pil(image: torch.Tensor, heat: torch.Tensor | None) -> Image.Image:
    """A batch image (uint8 C×H×W, as loaders deliver them) as an RGB picture of CELL×CELL pixels, with `heat` over
    it where given."""
    array = image.cpu().to(torch.uint8).permute(1, 2, 0).numpy()
    array = np.repeat(array, 3, axis=2) if array.shape[2] == 1 else array
    if heat is not None:
        return heat_over(array, heat.float().cpu().numpy(), side=CELL)
    return Image.fromarray(array).convert("RGB").resize((CELL, CELL), Image.Resampling.NEAREST)


def legend_lines(panels: list[tuple[torch.Tensor, SampleNote]], task_legends: list[str]) -> list[str]:
    """What the picture's marks mean: the frame colours (where a sample has a verdict), the tasks' own marks, and
    the heat (where a sample has a map)."""
    lines = list(dict.fromkeys(task_legends))
    if any(note.verdict for _, note in panels):
        lines.insert(0, "frame: " + ", ".join(f"{colour} = {verdict}" for verdict, colour in VERDICT_COLOURS.items()))
    if any(note.heat is not None for _, note in panels):
        lines.append(f"heat: {SAMPLE_MAP_METHOD} map of the prediction over the image (bright = relevant)")
    return lines


def render_grid(panels: list[tuple[torch.Tensor, SampleNote]], legend: list[str] = ()) -> Image.Image:
    """One picture: the legend lines on top, then COLUMNS images per row, each framed by its verdict, with its
    boxes drawn and its lines of text below it."""
    font = ImageFont.load_default(size=FONT_SIZE)
    width_chars = CELL // 6
    wrapped = [[w for line in _lines(note) for w in textwrap.wrap(line, width_chars) or [""]] for _, note in panels]
    rows = [range(i, min(i + COLUMNS, len(panels))) for i in range(0, len(panels), COLUMNS)]
    heights = [CELL + 6 + LINE_HEIGHT * max(len(wrapped[i]) for i in row) for row in rows]
    width = COLUMNS * (CELL + 4) + 4
    legend_wrapped = [w for line in legend for w in textwrap.wrap(line, width // 6)]
    legend_height = LINE_HEIGHT * len(legend_wrapped) + (4 if legend_wrapped else 0)
    canvas = Image.new("RGB", (width, legend_height + sum(heights) + 4 * len(rows) + 4), "white")
    draw = ImageDraw.Draw(canvas)
    for k, line in enumerate(legend_wrapped):
        draw.text((4, 2 + k * LINE_HEIGHT), line, fill="black", font=font)
    top = 4 + legend_height
    for row, height in zip(rows, heights):
        for column, i in enumerate(row):
            image, note = panels[i]
            left = 4 + column * (CELL + 4)
            canvas.paste(_to_pil(image, note.heat), (left, top))
            for box, colour in note.boxes:
                x0, y0, x1, y1 = (min(max(v, 0.0), 1.0) * CELL for v in box)
                draw.rectangle([left + x0, top + y0, left + x1, top + y1], outline=colour, width=2)
            if note.verdict is not None:
                colour = VERDICT_COLOURS[note.verdict]
                draw.rectangle([left, top, left + CELL - 1, top + CELL - 1], outline=colour, width=FRAME)
            for k, line in enumerate(wrapped[i]):
                draw.text((left, top + CELL + 4 + k * LINE_HEIGHT), line, fill="black", font=font)
        top += height + 4
    return canvas


def _lines(note: SampleNote) -> list[str]:
    """A sample's lines, the verdict first (in words too: the frame's colour alone is lost in grey)."""
    return [f"[{note.verdict}]", *note.lines] if note.verdict is not None else note.lines


def member_of(task: Task, batch: Batch) -> Task:
    """The task a batch belongs to (a multitask's member)."""
    return next((t for t in task.members() if t.name == batch.task), task)


def check_sample_maps(task: Task, model: VisionLanguageModel, *, image_size: int) -> None:
    """`ConfigError` (one line, before training starts) unless samples.attention can draw maps for some member of
    `task` with this model's fusion; a forward of one blank `image_size` image shows which attention the fusion
    records."""
    explainable = []
    for member in task.members():
        try:
            check_explainable(member)
            explainable.append(member)
        except ConfigError:
            pass
    if not explainable:
        raise ConfigError(f"samples.attention=true: task={task.name} has no maps ({EXPLAINED_TASKS})")
    fusion = getattr(model, "fusion", None)
    if fusion is None or getattr(model, "vision", None) is None:
        raise ConfigError("samples.attention=true: the model has no fusion of image and text to draw maps of")
    images = torch.zeros((1, 3, image_size, image_size), dtype=torch.uint8, device=model.image_mean.device)
    ids = torch.ones((1, 2), dtype=torch.long, device=images.device)
    recording, fusion.record_attention = fusion.record_attention, True
    try:
        with torch.no_grad():
            fusion(*model.encode(images, ids, torch.ones_like(ids)))
        recorded = RecordedAttention.of(fusion.attention_maps())
    finally:
        fusion.record_attention = recording
    if recorded is None:
        raise ConfigError(
            f"samples.attention=true: fusion {type(fusion).__name__} records no text→image attention to draw "
            f"(maps come from {FUSIONS_WITH_MAPS}); set samples.attention=false"
        )


def add_sample_maps(
    task: Task, model: VisionLanguageModel, batch: Batch, notes: list[SampleNote], special_ids: list[int]
) -> None:
    """Sets `heat` of the notes that name their batch row (`SampleNote.row`) to the Grad-CAM map of their
    prediction, when the batch's task has maps (`special_ids`: the tokenizer's, whose tokens are no words)."""
    member = member_of(task, batch)
    chosen = [note for note in notes if note.row is not None]
    if not chosen or batch.input_ids is None:
        return
    try:
        check_explainable(member)
    except ConfigError:
        return  # e.g. a multitask's captioning member: its pictures have no maps
    rows = torch.tensor([note.row for note in chosen], device=batch.image_index.device)
    input_ids, attention_mask = batch.input_ids[rows], batch.attention_mask[rows]
    vision, text = encode_for_maps(model, batch.images, input_ids, attention_mask, batch.image_index[rows])
    words = word_token_mask(input_ids, attention_mask, special_ids)
    maps = batch_relevance(member, model, vision, text, words, SAMPLE_MAP_METHOD)
    for note, heat in zip(chosen, maps.question_maps):
        note.heat = heat.cpu()
