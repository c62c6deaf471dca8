"""Errors of the planning core, rooted in the controller's error tree. Imports nothing else of ours."""

from __future__ import annotations

from controller.error import ControllerError


class PlanningError(ControllerError):
    """Root of planning failures."""


class UnknownProfile(PlanningError, KeyError):
    """No profile point exists for that variant on that device kind."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else "unknown profile"


class DuplicateDemand(PlanningError, ValueError):
    """Two demands name the same variant; the caller aggregates demand before planning."""


class UnknownPolicy(PlanningError, ValueError):
    """The planning policy named is not one of the policies the planner knows."""
