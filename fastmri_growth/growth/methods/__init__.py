"""The growth methods, one module each, behind one registry.

``METHODS`` maps a method's name to its class; ``growth_method=`` values and
``--growth-method`` choices are its keys. Add a method by writing a
:class:`GrowthMethod` subclass and decorating it with
:func:`register_method` (see the README, "How to add a growth method").
"""
from __future__ import annotations

from typing import Any, Dict, List, Type, Union

from .base import GrowthMethod, Option, Proposal

#: name -> method class, in registration order.
METHODS: Dict[str, Type[GrowthMethod]] = {}


def register_method(cls: Type[GrowthMethod]) -> Type[GrowthMethod]:
    """Class decorator: make ``cls`` available under ``cls.name``.

    Raises:
        ValueError: the name is empty or taken by another class, or an
            option clashes with a registered method's option of the same
            name but another default.
    """
    if not isinstance(cls, type) or not issubclass(cls, GrowthMethod):
        raise TypeError(f"register_method expects a GrowthMethod subclass, got {cls!r}")
    if not cls.name or not cls.name.isidentifier():
        raise ValueError(f"growth method name must be an identifier, got {cls.name!r}")
    if cls.name in METHODS and METHODS[cls.name] is not cls:
        raise ValueError(f"growth method {cls.name!r} is already registered ({METHODS[cls.name]})")
    for opt in cls.options:
        other = all_options().get(opt.name)
        if other is not None and other.default != opt.default:
            raise ValueError(
                f"option {opt.name!r} of {cls.name!r} has default {opt.default!r}, but another "
                f"method declares it with default {other.default!r}; use one default or another name"
            )
    METHODS[cls.name] = cls
    return cls


def all_options() -> Dict[str, Option]:
    """Every registered method's options, by name (shared names share one Option)."""
    out: Dict[str, Option] = {}
    for cls in METHODS.values():
        for opt in cls.options:
            out.setdefault(opt.name, opt)
    return out


def option_default(name: str) -> Any:
    """The default of a registered option (for signatures that spell options out)."""
    return all_options()[name].default


def check_method_name(name: Any) -> str:
    """Raise ValueError unless ``name`` is a registered method."""
    if not isinstance(name, str) or name not in METHODS:
        raise ValueError(f"Unknown growth method {name!r}; valid methods: {', '.join(METHODS)}")
    return name


def get_method(method: Union[str, GrowthMethod], **options: Any) -> GrowthMethod:
    """A configured method: an instance is returned as is, a name is built with ``options``.

    Options that the named method does not declare but another registered
    method does are ignored, so one set of options (the module's or the
    CLI's) configures whichever method is chosen; a name no method declares
    is an error.

    Raises:
        ValueError: unknown method name or option name, or a bad option value.
    """
    if isinstance(method, GrowthMethod):
        return method
    cls = METHODS[check_method_name(method)]
    unknown = sorted(set(options) - set(all_options()))
    if unknown:
        raise ValueError(f"Unknown growth method option(s) {', '.join(unknown)}; valid: "
                         f"{', '.join(all_options())}")
    mine = {o.name for o in cls.options}
    return cls(**{k: v for k, v in options.items() if k in mine})


def method_names() -> List[str]:
    return list(METHODS)


# Built-in methods register themselves on import, in this (choices) order.
from . import sample_select  # noqa: E402,F401,I001
from . import split  # noqa: E402,F401
from . import random  # noqa: E402,F401
from . import gradmax  # noqa: E402,F401

__all__ = ["METHODS", "GrowthMethod", "Option", "Proposal", "all_options", "check_method_name",
           "get_method", "method_names", "option_default", "register_method"]
