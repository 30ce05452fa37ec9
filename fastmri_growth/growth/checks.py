"""Value checks shared by every growth option, schedule and method.

Each check is ``check(name, value) -> problem`` (None when the value is
fine), so one function words every "must be an int >= 1" message, and
:func:`require` raises it.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Optional, Sequence

Check = Callable[[str, Any], Optional[str]]


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def int_at_least(low: int, optional: bool = False) -> Check:
    """An int ``>= low`` (or None, when ``optional``)."""
    def check(name: str, value: Any) -> Optional[str]:
        if optional and value is None:
            return None
        if not is_int(value) or value < low:
            return f"{name} must be an int >= {low}{' or None' if optional else ''}, got {value!r}"
        return None
    return check


def float_at_least(low: float, optional: bool = False) -> Check:
    """A finite float ``>= low`` (or None, when ``optional``)."""
    def check(name: str, value: Any) -> Optional[str]:
        if optional and value is None:
            return None
        if not isinstance(value, (int, float)) or isinstance(value, bool) \
                or not math.isfinite(value) or value < low:
            return (f"{name} must be a finite float >= {low:g}"
                    f"{' or None' if optional else ''}, got {value!r}")
        return None
    return check


def one_of(choices: Callable[[], Sequence[Any]], what: Optional[str] = None) -> Check:
    """One of ``choices()`` (looked up when checked, so registries may grow)."""
    def check(name: str, value: Any) -> Optional[str]:
        valid = list(choices())
        if value not in valid:
            return (f"Unknown {what or name} {value!r}; valid: "
                    f"{', '.join('None' if v is None else str(v) for v in valid)}")
        return None
    return check


def fraction(name: str, value: Any) -> Optional[str]:
    """A float in (0, 1), or None."""
    if value is None:
        return None
    if not (isinstance(value, (int, float)) and not isinstance(value, bool)
            and 0.0 < float(value) < 1.0):
        return f"{name} must be in (0, 1), got {value!r}"
    return None


def text_or_list(name: str, value: Any) -> Optional[str]:
    """None, a string, or a list of strings (site entries, epochs)."""
    if value is None or isinstance(value, str):
        return None
    if isinstance(value, (list, tuple)) and all(isinstance(v, (str, int)) for v in value):
        return None
    return f"{name} must be a string or a list of strings, got {value!r}"


def any_int(name: str, value: Any) -> Optional[str]:
    return None if is_int(value) else f"{name} must be an int, got {value!r}"


def anything(name: str, value: Any) -> Optional[str]:
    return None


def require(check: Check, name: str, value: Any) -> Any:
    """``value``, or ValueError with the check's message."""
    problem = check(name, value)
    if problem:
        raise ValueError(problem)
    return value
