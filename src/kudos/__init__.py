"""kudos: reinforcement learning with intrinsic rewards learned online from LLM feedback."""

from kudos.errors import KudosError

__version__ = "0.1.0"

__all__ = ["KudosError", "__version__"]
