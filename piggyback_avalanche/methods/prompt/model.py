"""PromptTuningModel: a vision transformer, its weights frozen, prompt tokens per task."""

from torch import nn

from piggyback_avalanche.checks import check_count
from piggyback_avalanche.methods.prompt.prompts import TaskPrompts
from piggyback_avalanche.task_aware.models import TaskAwareModel
from piggyback_avalanche.task_aware.shared_layers import SHARED_LAYER_TYPES

__all__ = ["PromptTuningModel", "DEFAULT_PROMPT_LENGTH", "PROMPT_SITES", "POSITIONAL"]

DEFAULT_PROMPT_LENGTH = 10
"""Default prompt tokens per task."""

PROMPT_SITES = ("encoder.dropout", "pos_drop")
"""Where prompts join the sequence when ``prompt_after`` is not given: the
module after the positional embedding in torchvision's
``VisionTransformer`` and in timm's ViT and DeiT."""

POSITIONAL = frozenset({"pos_embedding", "pos_embed"})
"""Names of the positional embedding, whose width the prompts take."""


class PromptTuningModel(TaskAwareModel):
    """Prompt tuning per task (VPT-shallow, Jia et al., ECCV 2022) on a vision
    transformer: every weight of the backbone is frozen and shared, layer
    norms included (as VPT keeps them); each task learns ``prompt_length``
    tokens appended to the sequence before the first encoder block, and its
    head.

    :param backbone: a vision transformer.
    :param classifier: the ``nn.Linear`` replaced by per-task heads.
    :param prompt_length: prompt tokens per task.
    :param prompt_after: the qualified name of the module whose output
        sequence gets the prompts; ``None`` finds one of :data:`PROMPT_SITES`.
    :param feature_statistics: per-task feature statistics, for task
        inference (see :class:`~piggyback_avalanche.task_aware.models.MultiHeadModel`).
    :raises ValueError: for a backbone without a place for prompts.
    """

    layer_types = SHARED_LAYER_TYPES  # type: ignore[assignment]

    def __init__(
        self,
        backbone: nn.Module,
        *,
        classifier: str | nn.Module | None = None,
        prompt_length: int = DEFAULT_PROMPT_LENGTH,
        prompt_after: str | None = None,
        feature_statistics: bool = False,
    ) -> None:
        check_count("prompt_length", prompt_length)
        self.prompt_length = prompt_length
        self.prompt_after = prompt_after
        super().__init__(
            backbone,
            classifier=classifier,
            task_batchnorm=False,
            feature_statistics=feature_statistics,
            layer_settings={},
        )

    def _convert(self, backbone: nn.Module, classifier_name: str) -> nn.Module:
        site, width = self._prompt_site(backbone)
        backbone = super()._convert(backbone, classifier_name)
        parent, _, name = site.rpartition(".")
        owner = backbone.get_submodule(parent)
        prompts = TaskPrompts(
            owner.get_submodule(name), width=width, length=self.prompt_length, task_state=self.task_state
        )
        setattr(owner, name, prompts)
        return backbone

    def _prompt_site(self, backbone: nn.Module) -> tuple[str, int]:
        """Where prompts join, and the tokens' width (the positional embedding's)."""
        modules = dict(backbone.named_modules())
        sites = [self.prompt_after] if self.prompt_after is not None else list(PROMPT_SITES)
        site = next((s for s in sites if s in modules), None)
        widths = [int(p.shape[-1]) for n, p in backbone.named_parameters() if n.rpartition(".")[2] in POSITIONAL]
        if site is None or not widths:
            where = repr(self.prompt_after) if self.prompt_after is not None else f"any of {sorted(PROMPT_SITES)}"
            raise ValueError(
                f"{type(self).__name__} appends prompt tokens after a vision transformer's positional embedding "
                f"({' or '.join(sorted(POSITIONAL))}), but the backbone has "
                + ("no positional embedding" if not widths else f"no module {where}")
                + ". Pass prompt_after='<qualified name of the module after the positional embedding>', or "
                "use a vision transformer."
            )
        return site, widths[0]
