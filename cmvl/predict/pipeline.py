"""Prediction on a user's own images and texts with a restored run: requests → typed `Batch`es → the task's
`predict_forward` → one typed result per request (`cmvl/tasks/prediction.py`), in the requests' order.

Requests are grouped by image, so each distinct image is decoded and encoded once however many questions it has;
images are decoded exactly as evaluation decodes them (`cmvl.predict.images`), optionally in DataLoader workers,
and only the checkpoint is read (no dataset). A request that cannot be predicted stops the run with one line naming
it (`on_error="stop"`) or becomes a `Failure` record (`on_error="skip"`).

    run = cmvl.load_run("best.ckpt")
    run.predict("a.jpg", question="What color is the circle?").answers[:3]      # one image, or a list of them
    predict_requests(run, [Request("a.jpg", {"question": "What color is the circle?"})], PredictSettings())

`Run.predict` is `predict` below (`cmvl.run` imports this module; nothing here imports `cmvl.run`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from cmvl.batch import Batch, TextQueries
from cmvl.data.datamodule import tokenize_queries
from cmvl.data.images import build_transform
from cmvl.data.text import TokenizedTexts
from cmvl.errors import ConfigError, UserError
from cmvl.predict import RestoredRun
from cmvl.predict.images import ImageInput, image_size, open_input_image
from cmvl.predict.requests import TEXT_FIELDS, Request, RequestError, image_identity
from cmvl.progress import track
from cmvl.tasks.base import Task, can_predict
from cmvl.tasks.prediction import PredictOptions, PredictTargets, Result

PRECISIONS = ("32", "bf16")  # bf16: autocast to bfloat16 (CPU and GPU); 32: float32, as evaluation computes
ON_ERROR = ("stop", "skip")


@dataclass(frozen=True)
class PredictSettings:
    """How a set of requests is predicted (each one a key of `cmvl predict`)."""

    task: str | None = None  # a multitask's member to ask; None: the run's own (single) task
    options: PredictOptions = field(default_factory=PredictOptions)
    batch_size: int = 64  # requests per forward pass
    precision: str = "32"
    on_error: str = "stop"  # stop: the first bad request ends it in one line; skip: it becomes a Failure
    num_workers: int = 0  # DataLoader processes that decode images (0: in this process)

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision={self.precision}: choose one of {', '.join(PRECISIONS)}")
        if self.on_error not in ON_ERROR:
            raise ConfigError(f"on_error={self.on_error}: choose one of {', '.join(ON_ERROR)}")
        if self.batch_size < 1 or self.num_workers < 0 or self.options.top(1) < 1:
            raise ConfigError("batch_size and top_k must be >= 1, num_workers >= 0")


@dataclass(frozen=True)
class Failure:
    """A request that could not be predicted, with the reason (`on_error=skip`)."""

    error: str

    def to_json(self) -> dict[str, Any]:
        return {"error": self.error}


def predicting_task(run: RestoredRun, name: str | None) -> Task:
    """The task of `run` that answers requests: the run's own, or the multitask member `name`; one line when that
    task does not exist or cmvl cannot predict with it."""
    members = {member.name: member for member in run.task.members()}
    if name is None:
        if len(members) > 1:
            raise ConfigError(f"this checkpoint is a multitask: choose a member with task=<{'|'.join(members)}>")
        name = next(iter(members))
    if name not in members:
        raise ConfigError(f"task={name}: this checkpoint's tasks are {', '.join(members)}")
    task = members[name]
    if not can_predict(task):
        raise ConfigError(f"cmvl predict does not run task={task.name} yet")
    return task


def request_text(task: Task, request: Request) -> str | None:
    """The text of `request` that `task` reads (None for an image-only task), or a `RequestError` naming it: a text
    the task does not take, a missing or an empty one (`predict_requests` then refuses one whose every token the
    tokenizer does not know, tokenising all requests' texts in one call)."""
    where = _where(request)
    wanted = task.predict_input
    extra = sorted(set(request.texts) - {wanted})
    if extra:
        takes = f"it takes {wanted}=" if wanted else "it reads only the image"
        raise RequestError(f"{where}task={task.name} takes no {extra[0]}= ({takes})")
    if wanted is None:
        return None
    text = request.texts.get(wanted)
    if text is None:
        raise RequestError(f"{where}task={task.name} needs {wanted}=TEXT")
    if not text.strip():
        raise RequestError(f"{where}{wanted} is empty")
    return text


def request_queries(task: Task, request: Request) -> tuple[str, ...] | None:
    """The queries of the batch that predicts `request`: its own (a task with free-text queries: detection), else the
    task's (`Task.query_texts`: class names, the checkpoint's detection queries), None for a task without; a
    `RequestError` naming it for queries its task does not take, an empty or a repeated one."""
    where = _where(request)
    if request.queries and not task.predict_queries:
        raise RequestError(f"{where}task={task.name} takes no queries= (task=detection looks for free-text queries)")
    if not request.queries:
        own = task.query_texts()
        return None if own is None else tuple(own)
    queries = tuple(q.strip() for q in request.queries)
    if not all(queries):
        raise RequestError(f"{where}a query is empty (queries={','.join(request.queries)})")
    repeated = next((q for k, q in enumerate(queries) if q in queries[:k]), None)
    if repeated is not None:
        raise RequestError(f"{where}query {repeated!r} is given twice")
    return queries


def request_image(task: Task, request: Request) -> None:
    """A `RequestError` naming `request` when it has no image and its task reads one, or one its task does not
    read (generation draws from the prompt alone)."""
    if request.image is None and task.predict_reads_image:
        raise RequestError(f'{_where(request)}needs "image": a path to an image file (image=FILE)')
    if request.image is not None and not task.predict_reads_image:
        raise RequestError(f"{_where(request)}task={task.name} reads no image: it draws one from prompt=TEXT")


def _where(request: Request) -> str:
    return f"{request.origin}: " if request.origin else ""


class _DecodedImages(Dataset):
    """Item i: the i-th distinct image as the model reads it (uint8 pixels, and its width and height as given), or
    the one line saying why it could not be read."""

    def __init__(self, run: RestoredRun, images: list[ImageInput]) -> None:
        self.images = images
        self.transform = build_transform(image_size=image_size(run), train=False)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, tuple[int, int]] | str:
        if self.images[i] is None:  # the requests of a task that reads no image (generation): a blank one
            side = self.transform(Image.new("RGB", (1, 1))).shape[-1]
            return torch.zeros((3, side, side), dtype=torch.uint8), (0, 0)
        try:
            image = open_input_image(self.images[i])
        except UserError as err:
            return str(err)
        return self.transform(image), image.size


def predict_requests(
    run: RestoredRun,
    requests: Sequence[Request | RequestError],
    settings: PredictSettings = PredictSettings(),
    *,
    progress: bool = False,
) -> list[Result | Failure]:
    """One result per request, in order (`Failure` for a bad request under `on_error="skip"`; under "stop" the first
    bad one raises its `UserError`). `progress`: a progress bar over the batches."""
    task = predicting_task(run, settings.task)
    outcomes: list[Result | Failure | None] = [None] * len(requests)
    texts: dict[int, str | None] = {}
    query_sets: dict[int, tuple[str, ...] | None] = {}
    for i, request in enumerate(requests):
        try:
            if isinstance(request, RequestError):
                raise request
            request_image(task, request)
            query_sets[i] = request_queries(task, request)
            texts[i] = request_text(task, request)  # last: a request in `texts` is one to predict
        except UserError as err:
            outcomes[i] = _failure(err, settings)
    tokens = _tokenized(run, task, texts)
    special = np.asarray(run.tokenizer.all_special_ids, dtype=np.int64)  # padding, unknown, [CLS], ...
    for i in [i for i in texts if tokens is not None and np.isin(tokens.ids(i), special).all()]:
        reason = f"{task.predict_input} {texts.pop(i)!r:.60}: none of its words is in the model's vocabulary"
        outcomes[i] = _failure(RequestError(_where(requests[i]) + reason), settings)
    queries = _tokenized_queries(run, {query_sets[i] for i in texts} - {None})
    for i in [i for i in texts if isinstance(queries.get(query_sets[i]), str)]:
        del texts[i]
        outcomes[i] = _failure(RequestError(_where(requests[i]) + queries[query_sets[i]]), settings)
    # Requests grouped by query set, then by image (first-seen orders): a batch holds one query set (the batch's
    # `queries`) and as few distinct images as it can; an image asked with two query sets is decoded twice.
    groups: dict[object, list[int]] = {}
    set_order = list(dict.fromkeys(query_sets[i] for i in texts))
    for i in sorted(texts, key=lambda i: set_order.index(query_sets[i])):
        groups.setdefault((query_sets[i], image_identity(requests[i].image)), []).append(i)
    images = _decoded_images(run, [requests[members[0]].image for members in groups.values()], settings)
    image_of = {i: g for g, members in enumerate(groups.values()) for i in members}
    by_set: dict[tuple[str, ...] | None, list[int]] = {}
    for (query_set, _), members in groups.items():
        by_set.setdefault(query_set, []).extend(members)
    chunks = [
        order[start : start + settings.batch_size]
        for order in by_set.values()
        for start in range(0, len(order), settings.batch_size)
    ]
    for chunk in track(chunks, total=len(chunks), description="predicting") if progress else chunks:
        decoded = {g: images.get(g) for g in dict.fromkeys(image_of[i] for i in chunk)}
        ready = []
        for i in chunk:
            if isinstance(decoded[image_of[i]], str):
                where = _where(requests[i])
                outcomes[i] = _failure(RequestError(where + decoded[image_of[i]].removeprefix(where)), settings)
            else:
                ready.append(i)
        if ready:
            batch = _batch(run, task, ready, tokens, texts, image_of, decoded)
            batch.queries = queries.get(query_sets[ready[0]])
            for i, result in zip(ready, _run_batch(run, task, batch, settings)):
                outcomes[i] = result
    return outcomes  # every request has its outcome now


def _failure(err: UserError, settings: PredictSettings) -> Failure:
    if settings.on_error == "stop":
        raise err
    return Failure(str(err))


class _ImageStream:
    """The decoded distinct images, read in order from a DataLoader (workers decode ahead); each image is kept until
    the batch after the one that first asked for it, since an image's requests may straddle two batches."""

    def __init__(self, loader: DataLoader) -> None:
        self.items: Iterator = iter(loader)
        self.kept: dict[int, Any] = {}
        self.next = 0

    def get(self, g: int) -> Any:
        while g >= self.next:
            self.kept[self.next] = next(self.items)
            self.next += 1
        for old in [k for k in self.kept if k < g - 1]:
            del self.kept[old]
        return self.kept[g]


def _decoded_images(run: RestoredRun, images: list[ImageInput], settings: PredictSettings) -> _ImageStream:
    workers = settings.num_workers if len(images) > 1 else 0
    loader = DataLoader(
        _DecodedImages(run, images),
        batch_size=None,
        num_workers=workers,
        prefetch_factor=4 if workers else None,
        persistent_workers=False,
    )
    return _ImageStream(loader)


@dataclass
class _RequestTokens:
    """The requests' texts tokenised in one call and truncated as evaluation tokenises a split (`TokenizedTexts`),
    padded per batch as an evaluation batch is."""

    tokens: TokenizedTexts
    row_of: dict[int, int]  # request → row of `tokens`

    def ids(self, i: int) -> np.ndarray:
        return self.tokens.row(self.row_of[i])

    def pad(self, requests: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.tokens.pad([self.ids(i) for i in requests])


def _tokenized(run: RestoredRun, task: Task, texts: dict[int, str | None]) -> _RequestTokens | None:
    """The texts of the requests (None for an image-only task)."""
    if task.predict_input is None:
        return None
    tokens = TokenizedTexts(run.tokenizer, list(texts.values()), int(run.config.text.max_length))
    return _RequestTokens(tokens, {i: k for k, i in enumerate(texts)})


def _tokenized_queries(run: RestoredRun, query_sets: set[tuple[str, ...]]) -> dict[tuple[str, ...], TextQueries | str]:
    """Each query set tokenised as evaluation tokenises a split's queries (`tokenize_queries`), on the run's device,
    or the one line saying which of its queries the model cannot read (every token special or unknown)."""
    special = torch.tensor(run.tokenizer.all_special_ids, dtype=torch.int64)
    tokenized: dict[tuple[str, ...], TextQueries | str] = {}
    for query_set in query_sets:
        found = tokenize_queries(run.tokenizer, list(query_set), int(run.config.text.max_length))
        unread = [q for q, ids in zip(query_set, found.input_ids) if torch.isin(ids, special).all()]
        tokenized[query_set] = (
            f"query {unread[0]!r:.60}: none of its words is in the model's vocabulary"
            if unread
            else found.to(run.device)
        )
    return tokenized


def _batch(
    run: RestoredRun,
    task: Task,
    rows: list[int],
    tokens: _RequestTokens | None,
    texts: dict[int, str | None],
    image_of: dict[int, int],
    decoded: dict,
) -> Batch:
    """The `Batch` of requests `rows` (their images decoded in `decoded`: group → (pixels, size)), padded as an
    evaluation batch is."""
    groups = list(dict.fromkeys(image_of[i] for i in rows))
    row_of_group = {g: r for r, g in enumerate(groups)}
    image_index = torch.tensor([row_of_group[image_of[i]] for i in rows], dtype=torch.int64)
    sizes = torch.tensor([decoded[image_of[i]][1] for i in rows], dtype=torch.float32)
    batch = Batch(
        images=torch.stack([decoded[g][0] for g in groups]),
        image_index=image_index,
        image_key=torch.tensor(groups, dtype=torch.int64),
        index=torch.tensor(rows, dtype=torch.int64),
        task=task.name,
        targets=PredictTargets(image_size=sizes),
    )
    if task.predict_input is not None:
        batch.texts = [texts[i] for i in rows]
        batch.input_ids, batch.attention_mask = tokens.pad(rows)
    return batch.to(run.device)


def _run_batch(run: RestoredRun, task: Task, batch: Batch, settings: PredictSettings) -> list[Result]:
    autocast = (
        torch.autocast(run.device.type, dtype=torch.bfloat16)
        if settings.precision == "bf16"
        else contextlib.nullcontext()
    )
    with torch.inference_mode(), autocast:
        outputs = task.predict_forward(run.model, batch, settings.options)
        return task.predict_results(outputs, batch, settings.options)


def predict(
    run: RestoredRun,
    image: ImageInput | Sequence[ImageInput] | None = None,
    *,
    question: str | Sequence[str] | None = None,
    phrase: str | Sequence[str] | None = None,
    prompt: str | Sequence[str] | None = None,
    queries: Sequence[str] = (),
    task: str | None = None,
    top_k: int | None = None,
    threshold: float | None = None,
    beam_size: int | None = None,
    precision: str = "32",
    batch_size: int = 64,
    seed: int = 0,
) -> Result | list[Result]:
    """The result for one image (a path or a PIL image), or the list of results for a list of images;
    `question` / `phrase`: one text for every image, or one per image; `queries`: detection's texts to find in every
    image (default: the checkpoint's). `top_k` / `threshold`: None, the task's own. A generator takes no image:
    `prompt` (one, or a list: one result each) is drawn from the noise of `seed`. A bad input raises its
    `UserError`."""
    if isinstance(queries, str):
        queries = [queries]
    if image is None and prompt is None:
        raise ConfigError("predict: give an image (a path or a PIL image), or a generator's prompt=")
    many = isinstance(image if image is not None else prompt, list | tuple)
    images = (list(image) if many else [image]) if image is not None else [None] * (len(prompt) if many else 1)
    given = {name: value for name, value in zip(TEXT_FIELDS, (question, phrase, prompt)) if value is not None}
    per_image = {}
    for name, value in given.items():
        values = [value] * len(images) if isinstance(value, str) else list(value)
        if len(values) != len(images):
            raise ConfigError(f"{name}: {len(values)} texts for {len(images)} images (give one, or one per image)")
        per_image[name] = values
    requests = [
        Request(
            im,
            {name: values[k] for name, values in per_image.items()},
            origin=f"image {k}" if many else "",
            queries=tuple(queries),
        )
        for k, im in enumerate(images)
    ]
    settings = PredictSettings(
        task=task,
        options=PredictOptions(top_k=top_k, threshold=threshold, beam_size=beam_size, seed=seed),
        batch_size=batch_size,
        precision=precision,
    )
    results = predict_requests(run, requests, settings)
    return results if many else results[0]
