"""Griffe extensions for the API reference (loaded by mkdocstrings, see mkdocs.yml).

``FrozenDataclasses``: treat jaxsde's dataclass decorators as ``@dataclasses.dataclass``. The
solvers, controllers and SDEs are declared with small decorators (``solver_class``,
``controller_class``, ``_frozen``) that apply ``dataclasses.dataclass(frozen=True)`` and register
the class as a static pytree. Griffe reads the source statically and only knows the standard
decorator, so it would see no ``__init__`` parameters, and every ``Args:`` entry of those classes
would be reported as unknown. This extension gives such classes the ``__init__`` the dataclass
machinery creates: the annotated class attributes of the class and of its decorated bases, in
definition order, with their defaults.

``SphinxRoles``: the docstrings cross-reference with Sphinx roles (``:func:`solve```,
``:class:`~jaxsde.driver.Solution```), which Markdown would print verbatim; they are shown as code
(``solve``, ``Solution``: a leading ``~`` keeps the last component, as in Sphinx).
"""

from __future__ import annotations

import re
from typing import Any

from griffe import Attribute, Class, Extension, Function, Module, Parameter, ParameterKind, Parameters

DECORATORS = ("solver_class", "controller_class", "_frozen")
_ROLE = re.compile(r":(?:py:)?(?:func|class|meth|mod|attr|data|obj|exc|const):`(~?)([^`]+)`")


def _is_frozen_dataclass(cls: Class, names: tuple[str, ...]) -> bool:
    return any(d.callable_path.rsplit(".", 1)[-1] in names for d in cls.decorators)


def _fields(cls: Class) -> list[Parameter]:
    params = []
    for member in cls.members.values():
        if member.is_alias or not isinstance(member, Attribute) or member.annotation is None:
            continue
        if "property" in member.labels:
            continue
        params.append(Parameter(member.name, annotation=member.annotation, default=member.value,
                                kind=ParameterKind.positional_or_keyword, docstring=member.docstring))
    return params


class FrozenDataclasses(Extension):
    """Create ``__init__`` for classes decorated with one of ``decorators``."""

    def __init__(self, decorators: list[str] | None = None) -> None:
        super().__init__()
        self.names = tuple(decorators or DECORATORS)

    def on_package(self, *, pkg: Module, **kwargs: Any) -> None:
        self._walk(pkg, set())

    def _walk(self, obj: Module | Class, seen: set[str]) -> None:
        if obj.path in seen:
            return
        seen.add(obj.path)
        if isinstance(obj, Class) and "__init__" not in obj.members and _is_frozen_dataclass(obj, self.names):
            self._set_init(obj)
        for member in list(obj.members.values()):
            if not member.is_alias and (member.is_module or member.is_class):
                self._walk(member, seen)

    def _set_init(self, cls: Class) -> None:
        by_name: dict[str, Parameter] = {}
        try:
            mro = [c for c in reversed(cls.mro()) if _is_frozen_dataclass(c, self.names)]
        except ValueError:
            mro = []
        for klass in [*mro, cls]:
            for param in _fields(klass):
                by_name[param.name] = param
        cls.labels.add("dataclass")
        cls.set_member("__init__", Function(
            "__init__", lineno=0, endlineno=0, parent=cls, returns="None",
            parameters=Parameters(Parameter("self", kind=ParameterKind.positional_or_keyword),
                                  *by_name.values())))


def _role_as_code(match: re.Match) -> str:
    tilde, target = match.groups()
    return f"``{target.rsplit('.', 1)[-1] if tilde else target}``"


class SphinxRoles(Extension):
    """Rewrite Sphinx cross-reference roles in every docstring as inline code."""

    def on_package(self, *, pkg: Module, **kwargs: Any) -> None:
        self._walk(pkg, set())

    def _walk(self, obj, seen: set[str]) -> None:
        if obj.path in seen:
            return
        seen.add(obj.path)
        if obj.docstring is not None:
            obj.docstring.value = _ROLE.sub(_role_as_code, obj.docstring.value)
        for member in list(obj.members.values()):
            if not member.is_alias:
                self._walk(member, seen)
