"""The model family interface: which parts a family can build, and how it is built from a run's config.

A family is chosen with `model=<name>`: `cmvl/conf/model/<name>.yaml` names the class (`_target_`) and holds the
family's settings (`dim`, `dropout`, …). A task names the families it runs on (`Task.families`) and the parts it
needs of them (`Task.parts`); `cmvl.training.build.build_model` checks the two fit and calls the family's
`from_recipe`, which builds only the parts the task needs, then the task's heads.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from torch import nn


@dataclass(frozen=True)
class Recipe:
    """What a family is built from; `build_model` makes it from the run's config, task and tokenizer."""

    config: Any  # the run's whole config (DictConfig): the family reads its own node `model` and its parts' nodes
    parts: frozenset[str]  # the parts the task needs: only these are built
    build: Callable[..., Any]  # build(config node, **kwargs): Hydra instantiation after cmvl's trust checks
    heads: Callable[[int], dict[str, nn.Module]]  # the task's heads at a width, by the name the task looks them up
    tokenizer: Any  # the run's tokenizer (a text part sizes its embeddings by it)


class ModelFamily(nn.Module):
    """Base class of the model families. Subclasses set `name` (their choice in cmvl/conf/model/) and `parts` (the
    parts a task may need of them), and build themselves in `from_recipe`."""

    name: ClassVar[str]
    parts: ClassVar[frozenset[str]]
    heads: nn.ModuleDict  # one head per task (a multitask's members), by task name

    @classmethod
    def from_recipe(cls, recipe: Recipe) -> ModelFamily:
        """The family with the parts `recipe.parts` and the task's heads, built from `recipe.config`."""
        raise NotImplementedError

    def part(self, name: str) -> nn.Module:
        """The part `name`; a task that runs a part it did not declare in `Task.parts` is a bug in that task."""
        module = getattr(self, name, None)
        if module is None:
            raise RuntimeError(f"the model has no '{name}' part: the task must list it in its `parts` to have it built")
        return module
