"""kudos's reward side on other training engines (``kudos[ray]``: Ray RLlib, :mod:`kudos.integrations.rllib`).

The engines are optional dependencies: import their module only after :func:`require_ray`.
"""

from __future__ import annotations

import importlib.util

from kudos.errors import KudosError

#: The install line an error message gives for the RLlib engine.
RAY_INSTALL = "pip install 'kudos[ray]'"


class MissingExtraError(KudosError):
    """An optional engine is not installed."""


def require_ray() -> None:
    """Raise :class:`MissingExtraError` (one line, with the install command) unless Ray is importable."""
    if importlib.util.find_spec("ray") is None:
        raise MissingExtraError(f"the rllib engine needs Ray RLlib, which is not installed: {RAY_INSTALL}")
