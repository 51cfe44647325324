"""Pretraining a backbone on a source task: what a stream without a
published pretrained network (the offline streams) starts from."""

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

__all__ = ["pretrain"]


def pretrain(
    backbone: nn.Module, source: tuple[Tensor, Tensor], *, epochs: int, lr: float, mb_size: int, device: str, seed: int
) -> nn.Module:
    """Train ``backbone`` on a source task (its images and labels, as the
    offline streams give them) with Adam, in place.

    :return: the backbone, in eval mode.
    """
    images, labels = source
    generator = torch.Generator().manual_seed(seed)
    backbone.to(device).train()
    optimizer = torch.optim.Adam(backbone.parameters(), lr=lr)
    for _ in tqdm(range(epochs), desc="pretraining", unit="epoch", leave=False, disable=None):
        for batch in torch.randperm(len(labels), generator=generator).split(mb_size):
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(backbone(images[batch].to(device)), labels[batch].to(device))
            loss.backward()
            optimizer.step()
    return backbone.cpu().eval()
