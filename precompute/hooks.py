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
    name: str = ""  # the capture it writes (decompose.CAPTURES), named in the note of an error it raises


def _named(hook: Hook) -> Callable:
    """``hook.fn``, adding the hook's name as a note to any exception it raises."""
    if not hook.name:
        return hook.fn

    def fn(*args):
        try:
            return hook.fn(*args)
        except Exception as e:
            e.add_note(f"raised in the {hook.kind} hook that captures {hook.name}")
            raise

    return fn


@contextmanager
def hooked(hooks: list[Hook]) -> Iterator[None]:
    """Register ``hooks`` for the duration of the block; always remove them."""
    handles = []
    try:
        for h in hooks:
            if h.kind == "forward":
                handles.append(h.module.register_forward_hook(_named(h)))
            elif h.kind == "forward_pre":
                handles.append(h.module.register_forward_pre_hook(_named(h)))
            else:
                raise ValueError(f"unknown hook kind {h.kind!r} for {h.name or h.module}: "
                                 "choose forward or forward_pre")
        yield
    finally:
        for handle in handles:
            handle.remove()


def hook_count(model: nn.Module) -> int:
    """How many forward / forward-pre hooks are registered anywhere in ``model`` (for tests)."""
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
