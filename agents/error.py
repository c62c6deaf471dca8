"""Errors of the agent and worker roles."""


class AgentError(Exception):
    """Root of agent and worker failures."""


class ArtifactError(AgentError):
    """An artifact could not be fetched, or its bytes do not match their sha256."""


class FetchInterrupted(ArtifactError):
    """A download did not complete for a reason of this host or its link (no link, no answer in
    time, a busy controller, a local I/O error): the artifact itself may well be fine."""


class WorkerSpecError(AgentError):
    """The worker process was started without a valid spec."""


class ModelLoadError(AgentError):
    """A model artifact could not be opened in its backend, or does not match its manifest."""
