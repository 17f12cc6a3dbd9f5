"""kudos: reinforcement learning with intrinsic rewards learned online from LLM feedback."""

from kudos.errors import KudosError

__version__ = "0.1.0"

#: Logger of start-up phases that can take seconds (verifying and loading the embedded LLM,
#: fitting offline Motif, starting env workers); ``kudos train`` shows it at INFO level.
STARTUP_LOG = "kudos.startup"

__all__ = ["KudosError", "__version__"]
