"""Building the console's HTML: every value is escaped on the way in.

``Html`` marks markup that is already safe; everything else that reaches a
page goes through ``escape``. There is no template language: pages are
small functions of their data, and the only way to put text on a page is
through these helpers, so a payload holding ``<script>`` is shown as text.
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable, Iterable, Sequence
from contextvars import ContextVar
from urllib.parse import quote, urlencode


class Html(str):
    """Markup that is safe as it is (built by this module from escaped parts)."""

    __slots__ = ()


class Name(str):
    """Text that names something (an aggregate id): shown with every
    character the API would refuse in an id (not ``str.isprintable``:
    controls, line breaks and tabs too, which in other text such as a
    payload's JSON are its layout; format characters such as a zero-width
    space; separators but the space) as its escape. An id stored before
    imports held ids to that rule would otherwise show "a\\nb" as "a b",
    and NUL, ESC or U+200B not at all."""

    __slots__ = ()


Content = Html | str | int | float | None

# Bidirectional controls (embeddings, overrides, isolates, marks): in
# stored text (an aggregate id, a command id, a handler's error) they would
# reorder what the operator reads ("display spoofing"), so they are shown
# as their escapes instead, marked, never as themselves. So are the other
# control characters (NUL, ESC, DEL, C1), which a browser drops or
# replaces: all but line breaks and tabs, which are text's layout (a
# ``Name`` escapes them too, and more).
_BIDI = "\\u061c\\u200e\\u200f\\u202a-\\u202e\\u2066-\\u2069"
_CONTROLS = re.compile(f"[\\x00-\\x08\\x0b\\x0c\\x0e-\\x1f\\x7f-\\x9f{_BIDI}]")
_SHORT_ESCAPES = {"\n": "\\n", "\t": "\\t", "\r": "\\r"}


def _escape_of(character: str) -> str:
    """A character's escape, as Python writes it."""
    code = ord(character)
    if character in _SHORT_ESCAPES:
        return _SHORT_ESCAPES[character]
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def _escaped_name(text: str, mark: Callable[[str], str]) -> str:
    return "".join(character if character.isprintable() else mark(_escape_of(character)) for character in text)


def _marked(escaped: str) -> str:
    return f'<span class="ctl">{escaped}</span>'


def escape(value: Content) -> Html:
    if isinstance(value, Html):
        return value
    text = html.escape("" if value is None else str(value), quote=True)
    if isinstance(value, Name):
        return Html(_escaped_name(text, _marked))
    return Html(_CONTROLS.sub(lambda found: _marked(_escape_of(found.group())), text))


def _escape_plain(value: Content) -> Html:
    """``escape`` where no markup may go (an attribute's value, the page's
    title, a tooltip): a control character as its escape, unmarked."""
    if isinstance(value, Html):
        return value
    text = html.escape("" if value is None else str(value), quote=True)
    if isinstance(value, Name):
        return Html(_escaped_name(text, str))
    return Html(_CONTROLS.sub(lambda found: _escape_of(found.group()), text))


def join(parts: Iterable[Content]) -> Html:
    return Html("".join(escape(part) for part in parts))


# The path the console is served under (``--console-path-prefix``: behind a
# reverse proxy at ``/chronicle``, say), "" at the root; set for each request
# by the server. The pages name their links from the console's root
# (``/log``) and this one place puts them under it: every href, src and form
# action that starts with "/", and the server's redirects (``console_path``),
# so no page needs to know where the console is mounted.
path_prefix: ContextVar[str] = ContextVar("console_path_prefix", default="")
_URL_ATTRIBUTES = ("href", "src", "action")


def console_path(path: str) -> str:
    """``path``, named from the console's root (``/log``), as the browser
    must ask for it: under the path prefix the console is served at."""
    return path_prefix.get() + path if path.startswith("/") else path


def _attribute(key: str, value: Content) -> Html:
    """An attribute's value: as it is (a form's hidden command id must post
    back exactly what it names), but for a tooltip, which is shown; a URL
    under the console's path prefix."""
    if key in _URL_ATTRIBUTES and isinstance(value, str):
        value = Html(console_path(value)) if isinstance(value, Html) else console_path(value)
    if isinstance(value, Html) or key == "title":
        return _escape_plain(value)
    return Html(html.escape(str(value), quote=True))


def tag(element: str, /, *children: Content, **attributes: str | int | None) -> Html:
    """``<name attr="…">children</name>``; attribute names ending in ``_``
    lose it (``class_``), None attributes are left out."""
    attrs = "".join(
        f' {key.rstrip("_").replace("_", "-")}="{_attribute(key, value)}"'
        for key, value in attributes.items()
        if value is not None
    )
    # A title's text is shown as it is, markup and all: no marked span there.
    inner = "".join(_escape_plain(child) for child in children) if element == "title" else join(children)
    return Html(f"<{element}{attrs}>{inner}</{element}>")


def void(element: str, /, **attributes: str | int | None) -> Html:
    attrs = "".join(
        f' {key.rstrip("_").replace("_", "-")}="{_attribute(key, value)}"'
        for key, value in attributes.items()
        if value is not None
    )
    return Html(f"<{element}{attrs}>")


def link(href: str, text: Content, /, **attributes: str | None) -> Html:
    return tag("a", text, href=href, **attributes)


def url(path: str, **query: str | int) -> str:
    """A console URL: path segments are quoted by the caller with ``segment``."""
    wanted = {key: value for key, value in query.items() if value not in ("", None)}
    return path + ("?" + urlencode(wanted) if wanted else "")


def segment(text: str) -> str:
    return quote(text, safe="")


def table(
    headings: Sequence[str],
    rows: Iterable[Sequence[Content]],
    *,
    empty: str = "nothing to show",
    **attributes: str | None,
) -> Html:
    body = [tag("tr", *(tag("td", cell) for cell in row)) for row in rows]
    if not body:
        body = [tag("tr", tag("td", empty, colspan=len(headings), class_="empty"))]
    return tag(
        "table",
        tag("thead", tag("tr", *(tag("th", heading) for heading in headings))),
        tag("tbody", *body),
        **attributes,
    )


def page(
    title: str,
    *content: Content,
    principal: str = "",
    csrf_token: str = "",
    current: str = "",
    refresh: int | None = None,
    scripts: Sequence[str] = (),
    audit: bool = False,
    load: bool = True,
) -> Html:
    """A whole page: the navigation (the audit log's link when ``audit``,
    the load's when ``load``: to those who may read them), who is logged
    in, ``content``."""
    nav = [
        link(href, label, class_="current" if href == current else None)
        for href, label in (
            ("/log", "Log"),
            ("/tail", "Live"),
            ("/projections", "Projections"),
            ("/reactions", "Reactions"),
            ("/groups", "Groups"),
            *((("/load", "Load"),) if load else ()),
            ("/cluster", "Cluster"),
            *((("/audit", "Audit"),) if audit else ()),
        )
    ]
    who: list[Content] = []
    if principal:
        who = [tag("span", principal, class_="principal")]
        if csrf_token:
            who.append(
                tag(
                    "form",
                    void("input", type="hidden", name="csrf_token", value=csrf_token),
                    tag("button", "Log out", type="submit"),
                    method="post",
                    action="/logout",
                    class_="logout",
                )
            )
    head = [
        void("meta", charset="utf-8"),
        void("meta", name="viewport", content="width=device-width, initial-scale=1"),
        tag("title", title, " · Chronicle console"),  # title kept apart: a ``Name`` is escaped as one
        void("link", rel="stylesheet", href="/static/console.css"),
    ]
    if refresh:
        head.append(void("meta", http_equiv="refresh", content=refresh))
    head.extend(tag("script", src=src, defer="") for src in scripts)
    body = tag(
        "body",
        tag("header", tag("strong", "Chronicle"), tag("nav", *nav), tag("div", *who, class_="who")),
        tag("main", tag("h1", title), *content),
        # The prefix, for the live tail's script to name the URLs it builds (none at the root).
        data_root=path_prefix.get() or None,
    )
    return Html("<!doctype html>\n" + tag("html", tag("head", *head), body, lang="en"))
