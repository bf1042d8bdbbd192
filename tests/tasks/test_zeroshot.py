"""`cmvl eval ckpt=<retrieval> task=zeroshot`: each class is the mean of its prompts' normalised text embeddings
(checked against a direct computation with the restored model), one template or the built-in ensemble, the
checkpoint's dataset or an ImageFolder; a class list the tokenizer cannot read and other bad input are one line."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

import cmvl
from cmvl.tasks.zeroshot import BUILTIN_TEMPLATES, ZeroShotTask
from cmvl.training.build import build_datamodule
from tests.conftest import FIXTURES, TINY_TRAINING, TINY_WORLD_ANY_TASK, assert_one_line_error, cli_in_process
from tests.data.sources.test_image_folder import make_image_folder

SHAPES = ["circle", "square", "triangle"]


@pytest.fixture(scope="module")
def retrieval_ckpt(tmp_path_factory, tiny_world):
    base = tmp_path_factory.mktemp("zeroshot")
    result = cli_in_process(
        "train",
        *TINY_WORLD_ANY_TASK,
        *TINY_TRAINING,
        "task=retrieval",
        "trainer.max_epochs=1",
        f"hydra.run.dir={base}/run",
        cwd=base,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return base / "run" / "checkpoints" / "best.ckpt"


def zeroshot(ckpt, out, *overrides):
    out.mkdir(exist_ok=True)
    return cli_in_process("eval", f"ckpt={ckpt}", f"out={out}", "task=zeroshot", *overrides, cwd=out)


def reference_labels(ckpt, templates: list[str]) -> tuple[list[str], torch.Tensor]:
    """The predicted class of each val image, computed here: each class's prompts tokenised and embedded one by
    one, their normalised embeddings averaged; and the image-by-class cosine similarities."""
    run = cmvl.load_run(ckpt)
    head = run.model.heads["retrieval"]
    with torch.no_grad():
        classes = []
        for name in SHAPES:
            prompts = []
            for template in templates:
                ids = run.tokenizer(template.format(name), return_tensors="pt")
                tokens = run.model.encode_texts(ids["input_ids"], ids["attention_mask"])
                prompts.append(F.normalize(head.text_proj(tokens.pooled_mean()), dim=-1)[0])
            classes.append(F.normalize(torch.stack(prompts).mean(0), dim=-1))
        task = ZeroShotTask(classes=SHAPES, templates=templates)
        datamodule = build_datamodule(run.config, task=task, tokenizer=run.tokenizer)
        similarity = []
        for batch in datamodule.eval_dataloaders("val")["zeroshot"]:
            pooled = run.model.encode_images(batch.images).pooled_mean()
            similarity.append(
                (F.normalize(head.image_proj(pooled), dim=-1) @ torch.stack(classes).T)[batch.image_index]
            )
    similarity = torch.cat(similarity)
    return [SHAPES[i] for i in similarity.argmax(1).tolist()], similarity


@pytest.mark.parametrize("single", [False, True], ids=["builtin-ensemble", "one-template-file"])
def test_class_embeddings_are_the_mean_of_their_prompts(retrieval_ckpt, tmp_path, single):
    templates = ["a picture of a {}."] if single else list(BUILTIN_TEMPLATES)
    if single:
        (tmp_path / "templates.txt").write_text("# one prompt\n\na picture of a {}.\n")
    choice = str(tmp_path / "templates.txt") if single else "builtin"
    result = zeroshot(retrieval_ckpt, tmp_path / "out", "classes=[circle,square,triangle]", f"templates={choice}")
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    predictions = json.loads((tmp_path / "out" / "predictions_zeroshot_val.json").read_text())
    expected, similarity = reference_labels(retrieval_ckpt, templates)
    assert [p["label"] for p in predictions] == expected
    assert set(predictions[0]) == {"image_id", "image", "label", "score", "top_k"}
    truth = [p["image"] for p in predictions]
    assert len(truth) == len(set(truth)) == metrics["num_predictions"]
    top1 = metrics["metrics"]["val/zeroshot/top1"]
    assert 0.0 <= top1 <= 1.0 and metrics["metrics"]["val/zeroshot/top5"] == 1.0
    assert similarity.shape == (len(predictions), 3)


def test_zeroshot_on_an_image_folder_defaults_to_its_class_names(retrieval_ckpt, tmp_path):
    root = make_image_folder(
        tmp_path / "data", {"train": {"circle": 1, "square": 1}, "val": {"circle": 2, "square": 1}}
    )
    result = zeroshot(retrieval_ckpt, tmp_path / "out", "dataset=image_folder", f"dataset.root={root}")
    assert result.returncode == 0, result.stderr[-3000:]
    predictions = json.loads((tmp_path / "out" / "predictions_zeroshot_val.json").read_text())
    assert [p["image"] for p in predictions] == ["val/circle/0.jpg", "val/circle/1.png", "val/square/0.jpg"]
    assert all(sorted(p["top_k"]) == ["circle", "square"] for p in predictions)


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        (["classes=[狗,猫,鸟]"], "maps every class '狗', '猫', '鸟' to unknown tokens only"),
        (["classes=[circle,square,狗]"], "maps class '狗' to unknown tokens only"),
        (["classes=[circle,square]"], "the split's images include class 'triangle'"),
        (["classes=[circle]"], "give at least two distinct class names"),
        (["templates=/no/such/file"], "templates=/no/such/file: neither 'builtin' nor a file"),
        (["dataset=coco", f"dataset.root={FIXTURES / 'coco'}"], "reads a classes table, which dataset=coco does not"),
    ],
)
def test_bad_zeroshot_input_is_one_line(retrieval_ckpt, tmp_path, overrides, needle):
    assert_one_line_error(zeroshot(retrieval_ckpt, tmp_path, *overrides), needle)


def test_a_template_without_one_slot_is_one_line(retrieval_ckpt, tmp_path):
    (tmp_path / "t.txt").write_text("a photo of a {}.\na photo\n")
    result = zeroshot(retrieval_ckpt, tmp_path, f"templates={tmp_path / 't.txt'}")
    assert_one_line_error(result, "template 2 'a photo' must hold exactly one {}")


def test_a_checkpoint_without_a_dual_encoder_is_one_line(finished_tiny_run, tmp_path):
    result = zeroshot(finished_tiny_run / "checkpoints" / "best.ckpt", tmp_path)
    assert_one_line_error(result, "task=zeroshot needs an image-text dual encoder", "task=vqa")
