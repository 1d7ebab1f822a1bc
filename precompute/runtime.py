"""Process set-up that has to happen before torch loads: one place for what every entry point needs."""

from __future__ import annotations

import os


def passive_openmp() -> None:
    """Make OpenMP threads sleep, not spin, while they wait (``OMP_WAIT_POLICY=PASSIVE``), unless the user chose.

    Spinning waits collapse when another process holds one of the cores: measured on the 2-core machine,
    training ran 2-3x slower and a ViT-B-32 forward of one image took 1.77 s spinning against 0.17 s passive
    beside a busy job; on an idle machine passive costs a few percent (~8% in training). libgomp reads the
    variable once, when torch loads, so the CLI, the toy-world CLI and the dashboard call this before any
    import that could load torch.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
