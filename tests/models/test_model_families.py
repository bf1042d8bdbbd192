"""Model families (`model=`): the config group keeps the shared sizes, a family builds only the parts its task
needs, a family that does not fit the task is one line before anything runs, and `Tokens` carry the image grid
through the fusions to the heads that point into it."""

from __future__ import annotations

import textwrap

import pytest
import torch
from torch import nn

from cmvl.config.compose import compose_config
from cmvl.errors import ConfigError
from cmvl.models.families.base import ModelFamily, Recipe
from cmvl.models.families.vl_fusion import VisionLanguageModel
from cmvl.models.fusion.attention import CrossAttentionFusion
from cmvl.models.fusion.bilinear import BilinearFusion
from cmvl.models.fusion.concat import ConcatFusion
from cmvl.models.fusion.film import FiLMFusion
from cmvl.models.fusion.graph import GraphFusion
from cmvl.models.fusion.merged import MergedFusion
from cmvl.models.fusion.residual import GatedResidualFusion
from cmvl.models.tokens import Tokens
from cmvl.tasks.base import family_problem
from cmvl.tasks.grounding import BoxHead
from cmvl.tasks.retrieval import RetrievalTask
from cmvl.tasks.tagging import TaggingTask
from cmvl.tasks.vqa import VQATask
from cmvl.training.build import build_datamodule, build_model
from tests.conftest import TINY_TRAINING, TINY_WORLD, TINY_WORLD_ANY_TASK, assert_one_line_error, cli_in_process

VL_FUSION = "cmvl.models.families.vl_fusion.VisionLanguageModel"
SIZES = [o for o in TINY_TRAINING if o.startswith(("model.", "vision.", "text."))]


class VisionOnlyFamily(ModelFamily):
    """A family of another kind (no text, no fusion), as a detector or an image generator would be."""

    name = "vision_only"
    parts = frozenset({"vision"})


def test_the_model_group_holds_the_shared_sizes():
    cfg = compose_config([])
    assert cfg.model._target_ == VL_FUSION and cfg.model.dim == 128
    cfg = compose_config(["model.dim=48", "model.dropout=0.2", "fusion=graph", "task=grounding"])
    assert (cfg.fusion.dim, cfg.fusion.dropout, cfg.task.dropout, cfg.text.encoder.dropout) == (48, 0.2, 0.2, 0.2)
    assert compose_config(["model=vl_fusion", "task=multitask"]).model._target_ == VL_FUSION


@pytest.fixture(scope="module")
def prepared(tiny_world):
    """task → (config, data module prepared on the tiny world)."""
    runs = {}
    for task in ("vqa", "tagging", "retrieval", "caption"):
        world = TINY_WORLD if task == "vqa" else TINY_WORLD_ANY_TASK
        cfg = compose_config([*world, *SIZES, f"task={task}"])
        datamodule = build_datamodule(cfg)
        datamodule.prepare()
        runs[task] = cfg, datamodule
    return runs


@pytest.mark.parametrize(
    ("task", "parts"),
    [
        ("vqa", {"vision", "vision_proj", "text", "text_proj", "fusion", "heads"}),
        ("retrieval", {"vision", "vision_proj", "text", "text_proj", "heads"}),  # no itm: no fusion
        ("tagging", {"vision", "vision_proj", "heads"}),  # image only
        ("caption", {"vision", "vision_proj", "heads"}),  # the decoder embeds its own text
    ],
)
def test_a_family_builds_only_the_parts_its_task_needs(prepared, task, parts):
    cfg, datamodule = prepared[task]
    model = build_model(cfg, datamodule.task, datamodule.tokenizer)
    assert {key.split(".")[0] for key in model.state_dict()} == parts
    assert all(p.requires_grad for p in model.parameters())  # nothing built only to be frozen (DDP, optimizer)
    if "text" not in parts:
        assert model.text is None and model.fusion is None
        with pytest.raises(RuntimeError, match="no 'text' part"):
            model.encode_texts(torch.zeros(1, 3, dtype=torch.long), torch.ones(1, 3, dtype=torch.long))


def test_the_default_model_draws_its_parameters_in_the_order_it_always_did(prepared):
    """Encoders, fusion, heads, then the projections: a seed gives the parameters it gave before model families
    (the default run's accuracy rests on it)."""
    cfg, datamodule = prepared["vqa"]
    torch.manual_seed(0)
    model = build_model(cfg, datamodule.task, datamodule.tokenizer)
    torch.manual_seed(0)
    from cmvl.config.instantiate import instantiate

    vision = instantiate(cfg.vision.encoder)
    text = instantiate(cfg.text.encoder, tokenizer=datamodule.tokenizer)
    fusion = instantiate(cfg.fusion)
    heads = datamodule.task.build_heads(cfg.model.dim)
    reference = VisionLanguageModel(
        vision=vision,
        text=text,
        fusion=fusion,
        heads=heads,
        dim=cfg.model.dim,
        image_mean=[0.5] * 3,
        image_std=[1.0] * 3,
    )
    assert list(model.state_dict()) == list(reference.state_dict())  # same order: optimizer states line up
    for key, value in reference.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key


def test_a_family_that_does_not_fit_the_task_is_refused():
    assert family_problem(VQATask, VisionLanguageModel) is None
    assert "model=vision_only does not fit task=vqa; it runs on model=vl_fusion" in family_problem(
        VQATask, VisionOnlyFamily
    )

    class Subclass(VisionLanguageModel):  # a variant of a family runs what the family runs
        pass

    assert family_problem(TaggingTask, Subclass) is None

    class Listed(TaggingTask):  # a task that names the family, but needs a part the family does not build
        families = (VisionOnlyFamily,)
        parts = frozenset({"vision", "text"})

    assert family_problem(Listed, VisionOnlyFamily) is None  # a class: only the families are known before building
    assert "model=vision_only builds no text part, which task=tagging needs" in family_problem(
        Listed(), VisionOnlyFamily
    )
    assert family_problem(RetrievalTask(itm=True), VisionLanguageModel) is None


def _user_family(tmp_path, monkeypatch) -> None:
    """A package `labfamilies` with a family class, and a config folder choosing it as `model=vision_only`."""
    package = tmp_path / "code" / "labfamilies"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(
        textwrap.dedent(
            """
            from cmvl.models.families.base import ModelFamily

            class VisionOnly(ModelFamily):
                name = "vision_only"
                parts = frozenset({"vision"})
            """
        )
    )
    (tmp_path / "conf" / "model").mkdir(parents=True)
    (tmp_path / "conf" / "model" / "vision_only.yaml").write_text(
        "_target_: labfamilies.VisionOnly\ndim: 32\ndropout: 0.0\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path / "code"))
    monkeypatch.setenv("CMVL_CONFIG_DIR", str(tmp_path / "conf"))


def test_a_model_choice_that_does_not_fit_the_task_is_one_line_before_anything_runs(tmp_path, monkeypatch):
    _user_family(tmp_path, monkeypatch)
    result = cli_in_process("train", "model=vision_only", "extra_target_prefixes=[labfamilies]", cwd=tmp_path)
    assert_one_line_error(result, "model=vision_only does not fit task=vqa", "model=vl_fusion")
    assert not (tmp_path / "outputs").exists()  # refused before the run directory was made


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        (["model=nope"], "model=nope"),  # an unknown choice
        (["model._target_=cmvl.models.fusion.concat.ConcatFusion"], "a cmvl model family"),  # not a family
        (["model._target_=os.system"], "model._target_=os.system"),  # nothing outside the allow-list is imported
    ],
)
def test_a_bad_model_choice_is_one_line(tmp_path, overrides, needle):
    assert_one_line_error(cli_in_process("train", *overrides, cwd=tmp_path), needle)


def test_build_model_refuses_a_family_that_does_not_fit(prepared):
    cfg, datamodule = prepared["vqa"]
    cfg = cfg.copy()
    cfg.model._target_ = "tests.models.test_model_families.VisionOnlyFamily"
    cfg.extra_target_prefixes = ["tests"]
    with pytest.raises(ConfigError, match="does not fit task=vqa"):
        build_model(cfg, datamodule.task, datamodule.tokenizer)


def test_a_family_is_built_from_a_recipe():
    """What build_model hands a family: the parts to build and how, the heads, the tokenizer."""
    built = []

    def build(node, **kwargs):
        built.append(node["name"])
        return {"vision": lambda: TinyVision(), "text": lambda: TinyText()}[node["name"]]()

    class TinyVision(nn.Module):
        out_dim = 8

    class TinyText(nn.Module):
        out_dim = 4

    config = {
        "vision": {"encoder": {"name": "vision"}},
        "text": {"encoder": {"name": "text"}},
        "fusion": {"name": "fusion"},
        "model": {"dim": 16},
        "data": {"image": {"mean": [0.5] * 3, "std": [0.2] * 3}},
    }
    from omegaconf import OmegaConf

    recipe = Recipe(
        config=OmegaConf.create(config),
        parts=frozenset({"vision"}),
        build=build,
        heads=lambda dim: {"tagging": nn.Linear(dim, 3)},
        tokenizer=None,
    )
    model = VisionLanguageModel.from_recipe(recipe)
    assert built == ["vision"] and model.text is None and model.fusion is None
    assert model.vision_proj[0].in_features == 8 and model.heads["tagging"].in_features == 16


# -- the grid ------------------------------------------------------------------------------------------------
DIM = 32
FUSIONS = {
    "concat": lambda: ConcatFusion(dim=DIM),
    "attention": lambda: CrossAttentionFusion(dim=DIM, layers=1, heads=2, co_attention=True),
    "residual": lambda: GatedResidualFusion(dim=DIM, layers=1, heads=2),
    "bilinear": lambda: BilinearFusion(dim=DIM, factors=2),
    "film": lambda: FiLMFusion(dim=DIM, layers=1, heads=2),
    "merged": lambda: MergedFusion(dim=DIM, layers=1, heads=2),
    "graph": lambda: GraphFusion(dim=DIM, layers=1, heads=2),
}


def _vision(grid, prefix: int = 1) -> Tokens:
    cells = grid[0] * grid[1] if grid else 6
    return Tokens(torch.randn(2, prefix + cells, DIM), torch.ones(2, prefix + cells, dtype=torch.bool), grid)


@pytest.mark.parametrize("fusion", FUSIONS)
@pytest.mark.parametrize("grid", [(2, 3), None])
def test_fusions_keep_the_image_grid_on_their_tokens(fusion, grid):
    vision, text = _vision(grid), Tokens(torch.randn(2, 4, DIM), torch.ones(2, 4, dtype=torch.bool))
    fused = FUSIONS[fusion]()(vision, text)
    assert fused.tokens.grid == grid
    if grid is not None:  # the grid's tokens are the fused tokens' last ones
        assert fused.tokens.grid_tokens().feats.shape[1] == grid[0] * grid[1]


def _encoders(tmp_path) -> dict:
    """name → (a tiny vision encoder, the grid of its tokens at 32 px, how many tokens stand before the grid)."""
    from transformers import AutoModel, ViTConfig

    from cmvl.models.vision.pretrained_vision import HFVisionEncoder, TimmEncoder, TorchvisionViTEncoder
    from cmvl.models.vision.tiny_cnn import TinyCNNEncoder
    from cmvl.models.vision.torchvision_cnn import TorchvisionCNNEncoder

    vit = ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, image_size=32)
    AutoModel.from_config(vit.__class__(**{**vit.to_dict(), "patch_size": 8})).save_pretrained(tmp_path / "vit")
    return {
        "tiny_cnn": (TinyCNNEncoder(channels=32), (4, 4), 0),  # stride 8
        "torchvision_cnn": (TorchvisionCNNEncoder(name="resnet18"), (1, 1), 0),  # stride 32
        "timm_cnn": (TimmEncoder(name="resnet18"), (1, 1), 0),
        "timm_vit": (TimmEncoder(name="vit_tiny_patch16_224", model_kwargs={"img_size": 32}), (2, 2), 1),  # [CLS]
        "torchvision_vit": (TorchvisionViTEncoder(name="vit_b_32", image_size=32), (1, 1), 1),
        "hf_vit": (HFVisionEncoder(name=str(tmp_path / "vit")), (4, 4), 1),  # 8 px patches
    }


def test_vision_encoders_say_where_their_grid_is(tmp_path):
    for name, (encoder, grid, prefix) in _encoders(tmp_path).items():
        with torch.no_grad():
            tokens = encoder(torch.randn(2, 3, 32, 32))
        assert tokens.grid == grid, name
        assert tokens.feats.shape[1] == prefix + grid[0] * grid[1], name


def test_tokens_carry_their_grid_through_selection_and_concatenation():
    vision = _vision((2, 3))
    assert vision.select(torch.tensor([1, 1, 0])).grid == (2, 3)
    assert vision.with_feats(vision.feats * 2).grid == (2, 3)
    text = Tokens(torch.randn(2, 4, DIM), torch.ones(2, 4, dtype=torch.bool))
    assert Tokens.concat(text, vision).grid == (2, 3)  # the image's tokens stay last
    assert Tokens.concat(vision, text).grid is None  # they do not: no grid is claimed
    with pytest.raises(ValueError, match="does not fit"):
        Tokens(torch.randn(2, 5, DIM), torch.ones(2, 5, dtype=torch.bool), (2, 3))
    with pytest.raises(ValueError, match="no spatial grid"):
        text.grid_tokens()


def test_the_box_head_points_into_any_grid():
    """A wide 2×4 grid: the head's centre is the centre of the cell it points at (no square assumed)."""
    torch.manual_seed(0)
    head = BoxHead(DIM, 2 * DIM, 0.0).eval()
    nn.init.zeros_(head.refine[-1].weight), nn.init.zeros_(head.refine[-1].bias)  # no offset: the pointed centre
    vision = _vision((2, 4))
    pooled = torch.randn(2, DIM)
    with torch.no_grad():  # every score but cell 6's (row 1, column 2) is far lower
        head.key.weight.zero_(), head.key.bias.zero_()
        vision.feats.zero_()
        vision.feats[:, 1 + 6] = 1.0
        head.key.weight.copy_(torch.eye(DIM) * 1e3)
        head.query.weight.copy_(torch.eye(DIM)), head.query.bias.fill_(1.0)
        pooled.fill_(1.0)
        box = head(pooled, vision)
    torch.testing.assert_close(box[:, :2], torch.tensor([[2.5 / 4, 1.5 / 2]] * 2))
    with pytest.raises(ConfigError, match="no spatial grid"):
        head(pooled, _vision(None))
