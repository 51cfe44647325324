"""Backbone conversion: finding a backbone's classifier, refusing what a
task-aware model cannot handle, and replacing modules by their task-aware
twins, hooks included. A model asks these; none of them knows a model."""

from collections.abc import Callable, Mapping

import torch
from torch import nn

from avalanche.models import DynamicModule

from piggyback_avalanche.task_aware.task_attention import ATTENTION_TYPES
from piggyback_avalanche.task_aware.task_norm import NORM_LAYER_TYPES

__all__ = [
    "SHARED_EMBEDDINGS",
    "find_classifier",
    "output_linear",
    "refuse_avalanche_dynamic_modules",
    "refuse_unsupported_parameters",
    "freeze_shared_embeddings",
    "carry_hooks",
    "replace_modules",
]

SHARED_EMBEDDINGS = frozenset(
    {
        "class_token",
        "cls_token",
        "dist_token",
        "reg_token",
        "pos_embedding",
        "pos_embed",
        "relative_position_bias_table",
    }
)
"""Names of the parameters that transformers hold outside any layer
(torchvision's and timm's class and distillation tokens, positional
embeddings, relative position bias tables): a task-aware model shares them
frozen, as pretraining left them, like the backbone's weights."""


def refuse_avalanche_dynamic_modules(backbone: nn.Module, model_name: str) -> None:
    """Avalanche's multi-task and dynamic models route tasks themselves and
    take task labels in ``forward``: the per-task heads would fight them."""
    dynamic = [
        f"{name or '<backbone>'} ({type(m).__name__})"
        for name, m in backbone.named_modules()
        if isinstance(m, DynamicModule)
    ]
    if dynamic:
        raise ValueError(
            f"The backbone holds Avalanche multi-task or dynamic modules: {', '.join(dynamic)}. "
            f"{model_name} makes its own heads, one per task, so give it the single-head network: "
            "SimpleMLP(...) instead of MTSimpleMLP(...), the model you passed to as_multitask(), or "
            "your network with an nn.Linear in place of IncrementalClassifier / MultiHeadClassifier."
        )


_HOOKS = (
    "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs",
    "_forward_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_backward_pre_hooks",
    "_backward_hooks",
)
"""The hooks a module keeps (torch's own dictionaries)."""


def carry_hooks(module: nn.Module, replacement: nn.Module) -> None:
    """Give ``replacement`` the hooks registered on the backbone's ``module``
    that it stands for, so that they fire in the model too; a replacement
    that runs ``module`` itself (a per-task norm around it) fires them
    already."""
    if replacement is module or any(inner is module for inner in replacement.modules()):
        return
    for name in _HOOKS:
        hooks = getattr(module, name, None)
        if hooks:
            getattr(replacement, name).update(hooks)


def output_linear(backbone: nn.Module) -> tuple[bool, str | None]:
    """Whether the backbone's forward pass could be traced, and the qualified
    name of the ``nn.Linear`` whose output is the backbone's output (``None``
    if untraced, or if the output is not an ``nn.Linear``'s)."""
    try:
        graph = torch.fx.symbolic_trace(backbone).graph
    except Exception:  # dynamic control flow and the like: torch.fx cannot follow it
        return False, None
    output = next(node for node in graph.nodes if node.op == "output").args[0]
    if isinstance(output, torch.fx.Node) and output.op == "call_module":
        if isinstance(backbone.get_submodule(str(output.target)), nn.Linear):
            return True, str(output.target)
    return True, None


def find_classifier(backbone: nn.Module, classifier: str | nn.Module | None) -> str:
    """The qualified name of the backbone's classifier: ``classifier`` (a
    module of the backbone or its name), or the ``nn.Linear`` whose output
    is the backbone's output.

    :raises ValueError: for a classifier that is not an ``nn.Linear`` of the
        backbone, or none found.
    """
    if isinstance(classifier, str):
        try:
            module = backbone.get_submodule(classifier)
        except AttributeError:
            raise ValueError(f"The backbone has no submodule named {classifier!r}.") from None
        if not isinstance(module, nn.Linear):
            raise ValueError(
                f"classifier {classifier!r} is a {type(module).__name__}; it must be an "
                "nn.Linear, which is replaced by one head per task."
            )
        return classifier
    linears = [name for name, module in backbone.named_modules() if isinstance(module, nn.Linear)]
    if classifier is not None:
        named = [name for name, module in backbone.named_modules() if module is classifier]
        if not named or named[0] not in linears:
            raise ValueError(
                "classifier must be an nn.Linear inside the backbone (or its qualified "
                "name); the given module is not one."
            )
        return named[0]
    if not linears:
        raise ValueError(
            "The backbone has no nn.Linear to replace by per-task heads. Pass "
            "classifier='<qualified name>' of its final nn.Linear."
        )
    traced, found = output_linear(backbone)
    if found is not None:
        return found
    if not traced and len(linears) == 1:
        return linears[0]
    why = (
        "its output is not the output of an nn.Linear (it is transformed after it, or a tuple)"
        if traced
        else "its forward pass cannot be traced with torch.fx"
    )
    raise ValueError(
        f"Cannot tell which nn.Linear is the backbone's classifier: {why}, and it has "
        f"{len(linears)} nn.Linear layers ({', '.join(linears)}). Pass classifier='<qualified name>'."
    )


def refuse_unsupported_parameters(
    backbone: nn.Module, classifier_name: str, layer_types: Mapping[type[nn.Module], type], model_name: str
) -> None:
    """Refuse a backbone with parameters that a task-aware model cannot
    handle: any outside the classifier, the layers it has twins for
    (``layer_types``), attention it replaces whole, normalization layers and
    :data:`SHARED_EMBEDDINGS`.

    :raises ValueError: naming each module and parameter, and what is supported.
    """
    attention = [name for name, module in backbone.named_modules() if type(module) in ATTENTION_TYPES]
    unsupported = [
        f"{name or '<backbone>'} ({type(module).__name__}: {', '.join(names)})"
        for name, module in backbone.named_modules()
        if name != classifier_name
        and type(module) not in layer_types
        and not isinstance(module, NORM_LAYER_TYPES)
        and not any(name == above or name.startswith(f"{above}.") for above in attention)
        for names in [[n for n, p in module._parameters.items() if p is not None and n not in SHARED_EMBEDDINGS]]
        if names
    ]
    if unsupported:
        raise ValueError(
            f"{model_name} cannot handle these modules' parameters: "
            + ", ".join(unsupported)
            + ". Supported: "
            + ", ".join(t.__name__ for t in layer_types)
            + " (task-aware weights), "
            + ", ".join(t.__name__ for t in ATTENTION_TYPES)
            + " (task-aware projections), "
            + ", ".join(t.__name__ for t in NORM_LAYER_TYPES)
            + " (per task), and parameters named "
            + ", ".join(sorted(SHARED_EMBEDDINGS))
            + " (shared and frozen). Express them with these layers, or fold them into the classifier."
        )


def freeze_shared_embeddings(backbone: nn.Module) -> None:
    """Freeze every :data:`SHARED_EMBEDDINGS` parameter: every task shares
    them as pretraining left them."""
    for module in backbone.modules():
        for name in SHARED_EMBEDDINGS & set(module._parameters):
            if module._parameters[name] is not None:
                module._parameters[name].requires_grad_(False)  # type: ignore[union-attr]


def replace_modules(backbone: nn.Module, replacement: Callable[[str, nn.Module], nn.Module]) -> nn.Module:
    """Replace each module of ``backbone`` (in place; the root itself too,
    then returned) by ``replacement(name, module)``, which returns the
    module itself to keep it; what lies below a replaced module is the
    replacement's, and is not visited. A module shared under several names
    gets one replacement. Hooks on a replaced module move to its replacement
    (:func:`carry_hooks`).

    :return: the converted backbone.
    """
    replaced: dict[int, nn.Module] = {}
    replaced_names: list[str] = []
    for name, module in list(backbone.named_modules(remove_duplicate=False)):
        if any(name.startswith(f"{above}.") for above in replaced_names):
            continue  # what lies below a replaced module is the replacement's
        if id(module) not in replaced:
            replaced[id(module)] = replacement(name, module)
            carry_hooks(module, replaced[id(module)])
        new = replaced[id(module)]
        if new is module:
            continue
        if not name:
            return new
        replaced_names.append(name)
        parent, _, attr = name.rpartition(".")
        setattr(backbone.get_submodule(parent), attr, new)
    return backbone
