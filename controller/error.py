"""Errors of the controller role."""


class ControllerError(Exception):
    """Root of controller failures."""


class RepositoryError(ControllerError):
    """The model repository folder holds a manifest or artifact that is not valid."""


class UnknownArtifact(ControllerError):
    """No variant in the repository has an artifact with that sha256."""
