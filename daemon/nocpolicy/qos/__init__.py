"""Emergency priority and utilisation limits (Art. 23(1)): plan (pure) -> render (pure) -> apply (Linux).

Stable API for router agents (the fleet applies the same plan on every router)::

    from nocpolicy.qos import LinuxBackend, plan_from_json, plan_to_json
    data = plan_to_json(plan)                 # controller: JSON-ready dict (format nocpolicy.qos.plan/1)
    result = LinuxBackend(netns=None).apply(plan_from_json(data))   # agent; raises EnforcementError
    ack = result.as_dict()                    # {"ok", "seconds", "tc_commands", "nft_bytes", "emergency", "steps"}

Importing this package does no work: the names below are loaded on first use.
"""

__all__ = ["ApplyResult", "LinuxBackend", "Plan", "apply_plan_json", "build_plan", "plan_from_json", "plan_to_json"]


def __getattr__(name):
    if name in ("LinuxBackend", "ApplyResult"):
        from . import apply
        return getattr(apply, name)
    if name in ("plan_to_json", "plan_from_json"):
        from . import serial
        return getattr(serial, name)
    if name in ("Plan", "build_plan"):
        from . import plan
        return getattr(plan, name)
    if name == "apply_plan_json":
        return apply_plan_json
    raise AttributeError(name)


def apply_plan_json(data, backend=None) -> dict:
    """Validate a serialized plan and apply it with the Linux backend; returns the result as a dict.

    Raises nocpolicy.errors.EnforcementError (bad plan, missing interface, kernel refused; the
    kernel then still holds the previous rules). Pass the same ``backend`` on every call so it
    can skip unchanged tc trees and roll back to the last good plan.
    """
    from .apply import LinuxBackend
    from .serial import plan_from_json
    backend = backend or LinuxBackend()
    return backend.apply(plan_from_json(data)).as_dict()
