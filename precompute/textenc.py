"""Text embeddings: one function, used by the textspan stage and the dashboard's live analyses."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from precompute.registry import LoadedModel


@torch.inference_mode()
def encode_texts(loaded: LoadedModel, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
    """L2-normalised ``encode_text`` of each text, no template: [m, D] float32."""
    model = loaded.model
    device = next(model.parameters()).device
    out = []
    for s in range(0, len(texts), batch_size):
        tokens = loaded.tokenizer(list(texts[s:s + batch_size])).to(device)  # [b, context]
        emb = model.encode_text(tokens).float()  # [b, D]
        out.append(torch.nn.functional.normalize(emb, dim=-1).cpu().numpy())
    if not out:
        return np.zeros((0, loaded.info.embed_dim), dtype=np.float32)
    return np.concatenate(out).astype(np.float32, copy=False)
