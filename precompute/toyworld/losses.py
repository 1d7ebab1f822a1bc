"""The toy models' training objective: multi-positive InfoNCE plus one auxiliary classifier per attribute.

A caption matches every image of the batch that agrees with all the attributes
it names (so short captions are not false negatives); the auxiliary linear
cross-entropy on the unnormalised image embedding breaks the colour x
background shortcut and is thrown away at export.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from precompute.toyworld.captions import ATTRIBUTE_NAMES, ATTRIBUTES


class AuxHeads(torch.nn.Module):
    """One linear classifier per attribute on the unnormalised image embedding (training only)."""

    def __init__(self, embed_dim: int):
        super().__init__()
        self.heads = torch.nn.ModuleList(torch.nn.Linear(embed_dim, len(ATTRIBUTES[a])) for a in ATTRIBUTE_NAMES)

    def forward(self, emb: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """Mean over attributes of the cross-entropy; emb [b, d], codes [b, a]."""
        losses = [F.cross_entropy(head(emb).float(), codes[:, i]) for i, head in enumerate(self.heads)]
        return torch.stack(losses).mean()


def match_matrix(codes: np.ndarray, named: np.ndarray) -> torch.Tensor:
    """[i, j] True where image i agrees with every attribute caption j names."""
    eq = codes[:, None, :] == codes[None, :, :]  # [i, j, a]
    return torch.from_numpy((eq | ~named[None, :, :]).all(-1))


def contrastive_loss(img: torch.Tensor, txt: torch.Tensor, scale: torch.Tensor, match: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE with soft targets spread over every matching pair; img/txt normalised [b, d]."""
    logits = scale * img.float() @ txt.float().T  # [i, j]
    target = match.float()
    i2t = -(target / target.sum(1, keepdim=True) * F.log_softmax(logits, 1)).sum(1).mean()
    t2i = -(target / target.sum(0, keepdim=True) * F.log_softmax(logits, 0)).sum(0).mean()
    return (i2t + t2i) / 2
