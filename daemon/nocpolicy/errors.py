"""The project's own exceptions; third-party errors are mapped to these at the boundary."""


class NocpolicyError(Exception):
    """Base class: a message an operator can act on."""


class PolicyInvalid(NocpolicyError):
    """A policy directory did not validate; ``problems`` lists every error found."""

    def __init__(self, problems):
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class StoreError(NocpolicyError):
    """The state database could not be read or written."""


class CommandError(NocpolicyError):
    """A control command was refused; ``status`` is the HTTP-like status code."""

    def __init__(self, message, status=400, field=None):
        self.status = status
        self.field = field
        super().__init__(message)


class DomainError(NocpolicyError):
    """A component refused a request; the control layer maps the kind to a status (400/404/409)."""

    def __init__(self, message, field=None):
        self.field = field
        super().__init__(message)


class Invalid(DomainError):
    """The request itself is wrong (a field out of range, contradictory values): 400."""


class NotFound(DomainError):
    """What the request names does not exist: 404."""


class Conflict(DomainError):
    """The request is well-formed but the current state refuses it: 409."""


class EnforcementError(NocpolicyError):
    """Applying rules to the kernel (or a router) failed."""
