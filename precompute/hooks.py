"""The one way this project touches a model's forward pass: hooks scoped by a context manager.

Every hook is removed in ``finally``, so an exception inside the forward pass
(or inside a hook) leaves the model exactly as it was.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, Literal

from torch import nn

HookKind = Literal["forward", "forward_pre"]


@dataclass(frozen=True)
class Hook:
    module: nn.Module
    kind: HookKind
    fn: Callable


@contextmanager
def hooked(hooks: list[Hook]) -> Iterator[None]:
    """Register ``hooks`` for the duration of the block; always remove them."""
    handles = []
    try:
        for h in hooks:
            if h.kind == "forward":
                handles.append(h.module.register_forward_hook(h.fn))
            elif h.kind == "forward_pre":
                handles.append(h.module.register_forward_pre_hook(h.fn))
            else:
                raise ValueError(f"unknown hook kind {h.kind!r}")
        yield
    finally:
        for handle in handles:
            handle.remove()


def hook_count(model: nn.Module) -> int:
    """How many forward / forward-pre hooks are registered anywhere in ``model`` (for tests)."""
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
