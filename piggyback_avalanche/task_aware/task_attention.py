"""Attention modules whose projections are task-aware: the transformer
counterpart of the convolutions in :mod:`~piggyback_avalanche.task_aware.task_layers`.

torchvision's attention does not call its projections as modules:
``nn.MultiheadAttention`` keeps its input projection as a bare parameter and
hands both projections' tensors to ``F.multi_head_attention_forward``, and
Swin's ``ShiftedWindowAttention`` reads ``self.qkv.weight`` itself. Making
those projections task-aware layers would change nothing, since the forward
pass never calls them. Each module here keeps the original's state-dict keys
and settings, holds its projections as the method's ``nn.Linear`` twins, and
computes attention with the current task's weights.

Attention built from ``nn.Linear`` modules that it calls (timm's ViT and
DeiT, torchvision's MaxViT) needs nothing of this: its linears become twins
like any other.
"""

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.swin_transformer import ShiftedWindowAttention, shifted_window_attention

from piggyback_avalanche.task_aware.task_state import StackingUnsupportedError, TaskState

__all__ = [
    "TaskMultiheadAttention",
    "TaskWindowAttention",
    "TaskTransformerEncoderLayer",
    "ATTENTION_TYPES",
    "LinearTwin",
]

LinearTwin = Callable[[nn.Module], nn.Module]
"""The owning model's conversion of a module: the task-aware twin of an
``nn.Linear`` (sharing its weight and bias), a per-task norm, a task-aware
attention; anything else as it is."""


def _linear_holding(weight: Tensor, bias: Tensor | None) -> nn.Linear:
    """An ``nn.Linear`` whose weight and bias are the given parameters."""
    linear = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device="meta")
    linear.weight = weight  # the attention's own parameter
    linear.bias = bias  # type: ignore[assignment]
    return linear


def _weight_and_bias(projection: nn.Module) -> tuple[Tensor, Tensor | None]:
    """The weight and bias a projection computes with now: the current
    task's for a task-aware layer, its own for the plain ``nn.Linear`` that
    replaces it in an exported task."""
    current = getattr(projection, "current_weight_and_bias", None)
    if current is not None:
        return current()
    return projection.weight, projection.bias  # type: ignore[return-value]  # an nn.Linear's


def _refuse_stacked(task_state: TaskState, what: str) -> None:
    if task_state.stacked is not None:
        raise StackingUnsupportedError(f"{what} computes one task per pass.")


class TaskMultiheadAttention(nn.Module):
    """``nn.MultiheadAttention`` with task-aware input and output projections.

    Same state-dict layout as the original apart from the input
    projection, which becomes a layer (``in_proj.weight`` and
    ``in_proj.bias`` instead of ``in_proj_weight`` and ``in_proj_bias``);
    same forward signature, and the same two paths: the fused inference
    kernel where ``nn.MultiheadAttention`` takes it (evaluation without
    gradients, self-attention, no masks), given the task's weights, and
    ``F.multi_head_attention_forward`` otherwise.

    :param attention: the backbone's attention, with one input projection
        for query, key and value and no ``bias_k``/``bias_v``.
    :param twin: the owning model's twin of an ``nn.Linear``.
    :raises ValueError: for an attention this cannot express.
    """

    superposes = False  # it reads one task's projection weights per pass

    def __init__(self, attention: nn.MultiheadAttention, *, twin: LinearTwin) -> None:
        super().__init__()
        if not attention._qkv_same_embed_dim or attention.bias_k is not None:
            raise ValueError(
                "nn.MultiheadAttention with kdim/vdim different from embed_dim or with add_bias_kv=True keeps "
                "parameters that no task-aware layer holds; build the backbone's attention without them."
            )
        self.embed_dim = attention.embed_dim
        self.num_heads = attention.num_heads
        self.dropout = attention.dropout
        self.batch_first = attention.batch_first
        self.add_zero_attn = attention.add_zero_attn
        self.in_proj = twin(_linear_holding(attention.in_proj_weight, attention.in_proj_bias))
        self.out_proj = twin(_linear_holding(attention.out_proj.weight, attention.out_proj.bias))

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_padding_mask: Tensor | None = None,
        need_weights: bool = True,
        attn_mask: Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        task_state = getattr(self.in_proj, "task_state", None)
        if task_state is not None:
            _refuse_stacked(task_state, "nn.MultiheadAttention")
        batched = query.dim() == 3
        in_weight, in_bias = _weight_and_bias(self.in_proj)
        out_weight, out_bias = _weight_and_bias(self.out_proj)
        fused = (
            # nn.MultiheadAttention's own conditions for its fused inference
            # kernel, which takes the weights as arguments: the task's here.
            not self.training
            and not torch.is_grad_enabled()
            and self.batch_first
            and batched
            and query is key
            and key is value
            and attn_mask is None
            and key_padding_mask is None
            and not need_weights
            and not is_causal
            and not self.add_zero_attn
            and self.num_heads % 2 == 0
            and not torch.is_autocast_enabled()
            and torch.backends.mha.get_fastpath_enabled()
        )
        if fused and in_bias is not None and out_bias is not None:
            return torch._native_multi_head_attention(
                query,
                key,
                value,
                self.embed_dim,
                self.num_heads,
                in_weight,
                in_bias,
                out_weight,
                out_bias,
                None,
                False,
                average_attn_weights,
                None,
            )
        if self.batch_first and batched:
            query, key, value = (x.transpose(1, 0) for x in (query, key, value))
        output, weights = F.multi_head_attention_forward(
            query,
            key,
            value,
            self.embed_dim,
            self.num_heads,
            in_weight,
            in_bias,
            None,
            None,
            self.add_zero_attn,
            self.dropout,
            out_weight,
            out_bias,
            training=self.training,
            key_padding_mask=key_padding_mask,
            need_weights=need_weights,
            attn_mask=attn_mask,
            average_attn_weights=average_attn_weights,
            is_causal=is_causal,
        )
        if self.batch_first and batched:
            output = output.transpose(1, 0)
        return output, weights


class TaskWindowAttention(nn.Module):
    """torchvision's Swin ``ShiftedWindowAttention`` with task-aware ``qkv``
    and ``proj``; same state-dict keys, settings and results. The relative
    position bias table is shared and frozen, like a positional embedding.

    :param attention: the backbone's (version 1) window attention.
    :param twin: the owning model's twin of an ``nn.Linear``.
    """

    superposes = False  # it reads one task's projection weights per pass

    def __init__(self, attention: ShiftedWindowAttention, *, twin: LinearTwin) -> None:
        super().__init__()
        self.window_size: list[int] = attention.window_size
        self.shift_size: list[int] = attention.shift_size
        self.num_heads: int = attention.num_heads
        self.attention_dropout: float = attention.attention_dropout
        self.dropout: float = attention.dropout
        self.qkv = twin(attention.qkv)
        self.proj = twin(attention.proj)
        self.relative_position_bias_table = attention.relative_position_bias_table.requires_grad_(False)
        self.register_buffer("relative_position_index", attention.relative_position_index)

    def forward(self, x: Tensor) -> Tensor:
        task_state = getattr(self.qkv, "task_state", None)
        if task_state is not None:
            _refuse_stacked(task_state, "Swin's window attention")
        qkv_weight, qkv_bias = _weight_and_bias(self.qkv)
        proj_weight, proj_bias = _weight_and_bias(self.proj)
        return shifted_window_attention(
            x,
            qkv_weight,
            proj_weight,
            ShiftedWindowAttention.get_relative_position_bias(self),  # reads only what is copied here
            self.window_size,
            self.num_heads,
            shift_size=self.shift_size,
            attention_dropout=self.attention_dropout,
            dropout=self.dropout,
            qkv_bias=qkv_bias,
            proj_bias=proj_bias,
            training=self.training,
        )


class TaskTransformerEncoderLayer(nn.TransformerEncoderLayer):
    """``nn.TransformerEncoderLayer`` whose children are task-aware (its
    attention a :class:`TaskMultiheadAttention`, its linears the method's
    twins, its norms per task) and whose forward pass always calls them.

    torch's own forward takes a fused inference path that reads
    ``linear1.weight`` and the other tensors directly, the shared weights
    instead of the task's; this forward is torch's other path, the one that
    calls the modules.

    :param layer: the backbone's encoder layer.
    :param twin: the owning model's conversion of a child module.
    """

    def __init__(self, layer: nn.TransformerEncoderLayer, *, twin: LinearTwin) -> None:
        nn.Module.__init__(self)
        self.norm_first = layer.norm_first
        self.activation_relu_or_gelu = layer.activation_relu_or_gelu
        self.activation = layer.activation
        for name, child in layer.named_children():
            setattr(self, name, twin(child))

    def forward(
        self,
        src: Tensor,
        src_mask: Tensor | None = None,
        src_key_padding_mask: Tensor | None = None,
        is_causal: bool = False,
    ) -> Tensor:
        x = src
        if self.norm_first:
            x = x + self._sa_block(self.norm1(x), src_mask, src_key_padding_mask, is_causal=is_causal)
            return x + self._ff_block(self.norm2(x))
        x = self.norm1(x + self._sa_block(x, src_mask, src_key_padding_mask, is_causal=is_causal))
        return self.norm2(x + self._ff_block(x))


ATTENTION_TYPES: dict[type[nn.Module], Callable[..., nn.Module]] = {
    nn.MultiheadAttention: TaskMultiheadAttention,
    ShiftedWindowAttention: TaskWindowAttention,
    nn.TransformerEncoderLayer: TaskTransformerEncoderLayer,
}
"""Attention types and transformer layers (exact types: Swin V2's subclass
keeps more parameters) and the task-aware modules that replace them, built
as ``replacement(module, twin=...)``, where ``twin`` converts a child
module as the model would; everything below them is theirs."""
