"""The runner's pretrained backbones: built by name, pretrained on a
stream's source task once, and cached in the output folder (checksummed,
keyed by every setting that shapes them)."""

import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from piggyback_avalanche.benchmarks.offline import (
    SourceTask,
)
from piggyback_avalanche.files import (
    check_checksum,
    read_saved,
    with_checksum,
    write_atomically,
)
from piggyback_avalanche.networks.backbones import BACKBONES
from piggyback_avalanche.networks.pretraining import pretrain

__all__ = ["pretrained_backbone", "settings_key"]


def settings_key(**settings: Any) -> str:
    """A short hash of ``settings`` (as JSON): what names a cached backbone
    or a finished run by the settings that made it."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


class _CorruptCache(ValueError):
    """A cached pretrained backbone that is not what the runner wrote."""


def pretrained_backbone(
    name: str,
    stream: str,
    source: SourceTask | None,
    input_shape: Sequence[int],
    *,
    pretrained: bool,
    seed: int,
    cache_dir: Path,
    pretraining: dict[str, Any],
    log: Callable[[str], None],
) -> nn.Module:
    """A fresh backbone: with published weights if ``pretrained``; else
    pretrained on the source task if the stream has one, from a cache under
    ``cache_dir`` after the first time.

    :param pretraining: ``epochs``, ``lr``, ``mb_size`` and ``device`` of
        the pretraining; a cached backbone is reused only for the same ones,
        and one that fails its checksum or holds non-finite values is
        pretrained again.
    """
    torch.manual_seed(seed)
    backbone = BACKBONES[name](input_shape, pretrained)
    if source is None or pretrained:
        return backbone
    # Keyed by the source task itself, so streams that share it share the
    # backbone, and by every setting that changes what pretraining makes.
    source_key = hashlib.sha256(source[0].numpy().tobytes() + source[1].numpy().tobytes()).hexdigest()[:12]
    settings = {**pretraining, "device": torch.device(pretraining["device"]).type, "seed": seed, "backbone": name}
    path = (
        cache_dir / f"{name}-source{source_key}-seed{seed}-epochs{pretraining['epochs']}-{settings_key(**settings)}.pt"
    )
    if path.exists():
        try:
            backbone.load_state_dict(_read_cached_backbone(path, settings))
            return backbone
        except _CorruptCache as error:
            log(f"{error}; pretraining again")
    log(f"pretraining {name} on the source task of {stream} ({pretraining['epochs']} epochs)")
    pretrain(
        backbone,
        source,
        epochs=pretraining["epochs"],
        lr=pretraining["lr"],
        mb_size=pretraining["mb_size"],
        device=pretraining["device"],
        seed=seed,
    )
    cached = with_checksum({"settings": settings, "state_dict": dict(backbone.state_dict())})
    write_atomically(path, lambda f: torch.save(cached, f), binary=True)
    return backbone


def _read_cached_backbone(path: Path, settings: dict[str, Any]) -> dict[str, torch.Tensor]:
    """A cached backbone's weights, whole, finite and made with ``settings``.

    :raises _CorruptCache: naming what is wrong.
    """
    remedy = "The runner pretrains it again."
    cached = read_saved(path, weights_only=True, error=_CorruptCache, what="cached backbone", remedy=remedy)
    if not isinstance(cached, dict) or not isinstance(cached.get("state_dict"), dict):
        raise _CorruptCache(f"The cached backbone {path} is not one the runner wrote")
    check_checksum(cached, error=_CorruptCache, what="cached backbone", path=path, remedy=remedy)
    if cached.get("settings") != settings:
        raise _CorruptCache(f"The cached backbone {path} was pretrained with other settings")
    state = cached["state_dict"]
    if not all(isinstance(t, torch.Tensor) and bool(torch.isfinite(t).all()) for t in state.values()):
        raise _CorruptCache(f"The cached backbone {path} holds values that are not finite")
    return state
