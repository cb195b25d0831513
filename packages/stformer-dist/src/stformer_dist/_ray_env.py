"""The process environment Ray needs, set before Ray is imported (import this module first).

Under ``uv run``, Ray's uv hook (on by default, ``RAY_ENABLE_UV_RUN_RUNTIME_ENV``) gives every
worker a runtime environment that runs ``uv run`` again in a packaged copy of the working
directory; there the workers find no Ray (``No module named 'ray'``) and a training run ends in
``ActorUnschedulableError``. stformer's workers run on the driver's own interpreter instead, so the
hook is switched off -- in the environment when Ray is not imported yet (Ray reads the flag on
import), and in Ray's constants when it already is. Ray 2.60's token authentication is switched off
for local clusters (``RAY_AUTH_MODE=disabled``). A value the user set is left alone.
"""

from __future__ import annotations

import os
import sys

#: What stformer sets unless the user did.
RAY_ENV_DEFAULTS = {"RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0", "RAY_AUTH_MODE": "disabled"}


def prepare_ray_environment() -> None:
    """Set :data:`RAY_ENV_DEFAULTS` in this process (idempotent; call before ``import ray``)."""
    for key, value in RAY_ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)
    constants = sys.modules.get("ray._private.ray_constants")
    if constants is not None and os.environ["RAY_ENABLE_UV_RUN_RUNTIME_ENV"] == "0":
        # Ray was imported before stformer_dist: its flag was read already
        constants.RAY_ENABLE_UV_RUN_RUNTIME_ENV = False


prepare_ray_environment()
