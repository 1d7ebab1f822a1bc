"""A Ray session leaves the process's signal handlers as it found them (ray.init installs its own SIGTERM handler).

In a file of its own: tests/cli/test_ray_engine.py keeps a module-wide Ray instance, and this needs none running.
"""

from __future__ import annotations

import signal

import pytest


def test_a_ray_session_puts_back_the_signal_handlers_it_found():
    ray = pytest.importorskip("ray", reason="needs the ray extra: pip install -e '.[ray]'")
    from precompute.engine_ray import RayOptions, RaySession

    assert not ray.is_initialized(), "another test left Ray running in this process"
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    with RaySession(RayOptions(num_cpus=1)) as session:
        assert session.owned
        replaced = signal.getsignal(signal.SIGTERM)
    assert {sig: signal.getsignal(sig) for sig in before} == before
    assert replaced is not before[signal.SIGTERM]  # ray.init did replace it: the test checks what it claims
