"""Errors of the agent and worker roles."""


class AgentError(Exception):
    """Root of agent and worker failures."""


class ArtifactError(AgentError):
    """An artifact could not be fetched, or its bytes do not match their sha256."""


class WorkerSpecError(AgentError):
    """The worker process was started without a valid spec."""


class ModelLoadError(AgentError):
    """A model artifact could not be opened in its backend, or does not match its manifest."""
