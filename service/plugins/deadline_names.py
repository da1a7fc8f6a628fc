"""The deadline names a reaction's functions name in their own code, found
when the plugins load, so that a typo (``Schedule("paymnet", …)`` beside
``@on_deadline("payment")``) stops the server at start-up instead of the
reaction at the first event that schedules it (``UNKNOWN_DEADLINE`` then,
at run time, after the event's other commands went out).

Read from each function's source (``inspect.getsource``, parsed with
``ast``): the first argument (or ``name=``) of every call of ``Schedule``
or ``Cancel`` written in it, when it is a string literal or a module-level
name bound to a string (``PAYMENT = "payment"``). The callee is resolved
through the function's globals, so only calls of ``service.plugins``'
``Schedule`` and ``Cancel`` count (by name or as ``module.Schedule``).
What cannot be known without running the function is not checked: a name
computed at run time, a ``Schedule`` built in a helper it calls, a function
whose source is not available (a ``.pyc`` alone, one made by ``exec``),
a lambda (its source is its lines, which may hold calls of others).
Those are still caught when they run."""

from __future__ import annotations

import ast
import inspect
import textwrap
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from service.plugins.reactions import Cancel, Reaction, Schedule


@dataclass(frozen=True, slots=True)
class NamedDeadline:
    """A deadline name one of a reaction's functions names: the function
    (its qualified name), the call (``Schedule``, ``Cancel``), the name."""

    function: str
    call: str
    name: str


def named_deadlines(reaction: Reaction[Any]) -> Iterator[NamedDeadline]:
    """Every deadline name the reaction's functions (event handlers,
    ``on_refused``, ``@on_deadline`` functions) name in their code, as far
    as it can be known without running them."""
    functions: list[Callable[..., Any]] = [handler for _, handler in reaction.handlers.values()]
    if reaction.refused_handler is not None:
        functions.append(reaction.refused_handler)
    functions.extend(reaction.deadline_handlers.values())
    for function in functions:
        yield from _named_in(function)


def _named_in(function: Callable[..., Any]) -> Iterator[NamedDeadline]:
    code = getattr(inspect.unwrap(function), "__code__", None)
    if code is None or code.co_name == "<lambda>":
        # A lambda's source is the lines it is on, which may hold other
        # calls than its own: a name read there could be another's.
        return
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(function)))
    except (OSError, TypeError, SyntaxError):
        return  # no source to read (or a lambda's line that does not parse alone): checked when it runs
    scope: dict[str, Any] = getattr(inspect.unwrap(function), "__globals__", {})
    qualname = str(getattr(function, "__qualname__", function))
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        called = _resolved(node.func, scope)
        if called is not Schedule and called is not Cancel:
            continue
        argument = node.args[0] if node.args else next((k.value for k in node.keywords if k.arg == "name"), None)
        name = _resolved(argument, scope) if argument is not None else None
        if isinstance(name, str):
            yield NamedDeadline(qualname, called.__name__, name)


def _resolved(node: ast.expr, scope: dict[str, Any]) -> object:
    """What ``node`` stands for, if it is a literal or a (dotted) name bound
    in the module's globals; None otherwise."""
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name):
        return scope.get(node.id)
    if isinstance(node, ast.Attribute):
        owner = _resolved(node.value, scope)
        return getattr(owner, node.attr, None) if owner is not None else None
    return None
