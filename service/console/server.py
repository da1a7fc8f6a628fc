"""The operators' console: an HTTP server of its own (``--console-listen``)
in the server process, with the API's authentication and policy.

With ``--auth`` every page but the login needs a session: the operator
logs in with an API key or a JWT, as a client would send it, and gets an
opaque session id in an HttpOnly, SameSite=Strict cookie (see
``sessions``). Forms that change something carry the session's CSRF token
and must come from the console's own origin. Without ``--auth`` (loopback
only: the console refuses to start elsewhere) the caller is anonymous, as
on the API, and the console answers only requests addressed to a loopback
host name, so that a web page that rebinds its own name to 127.0.0.1
cannot read it through the operator's browser.

Every response carries a Content-Security-Policy that allows only the
console's own script and style files (no inline script, no framing).
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from http import HTTPStatus
from importlib import resources
from urllib.parse import unquote

from service.console import audit, groups, parked, views
from service.console.confirming import Changed, StoppedPartway
from service.console.consoles import console_url
from service.console.cursors import Cursors
from service.console.html import Content, Html, console_path, link, page, path_prefix, segment, tag, url, void
from service.console.http import HttpServer, Request, Response
from service.console.sessions import COOKIE, Session, Sessions, same_token
from service.console.tail_resume import TailResume
from service.errors import (
    AggregateNotFound,
    ChronicleError,
    ConfigurationError,
    InvalidInput,
    PermissionDenied,
    ResourceNotFound,
    Unauthenticated,
    ValidationError,
)
from service.principal import ANONYMOUS, Principal, current_peer, current_principal
from service.security.credentials import Authenticator
from service.security.exposure import is_loopback

log = logging.getLogger("chronicle.console")

SECURITY_HEADERS = [
    (
        "Content-Security-Policy",
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self';"
        " form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    ),
    ("X-Frame-Options", "DENY"),
    ("X-Content-Type-Options", "nosniff"),
    # same-origin, not no-referrer: under no-referrer a browser sends "Origin: null" with
    # the console's own form posts, and the origin check could not tell them apart.
    ("Referrer-Policy", "same-origin"),
    ("Cross-Origin-Opener-Policy", "same-origin"),
    ("Cross-Origin-Resource-Policy", "same-origin"),
    ("Cache-Control", "no-store"),
]
# Over HTTPS only (RFC 6797: a browser ignores it over plain HTTP): the
# browser then goes to this host over HTTPS only, for a year, so a link or a
# typed http:// address cannot be intercepted on the way. Not for the name
# "localhost" (browsers ignore it for addresses already): it would hold for
# every plain-HTTP service a developer runs there. No includeSubDomains: the
# console cannot speak for the rest of its domain.
STRICT_TRANSPORT_SECURITY = ("Strict-Transport-Security", "max-age=31536000")
_STATIC = {"console.css": "text/css; charset=utf-8", "console.js": "text/javascript; charset=utf-8"}
_LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]")
# A reaction's parked commands: what the admin may do to them (each a POST).
_REACTION_ACTIONS = ("replay", "dismiss", "replay-all", "dismiss-all")
# Pages whose servicer writes its own refusal to the audit log (QueryAudit
# is an administrator's RPC): the console counts it, and does not write it twice.
_AUDITED_BY_THEIR_RPC = ("/audit",)
# Pages only an administrator (for the audit, a tenant's too) may read: the
# grant is checked before anything the address says (its fields, filters,
# cursor), or a refusal of a field would tell anyone the page's field names
# and what it accepts.
_ADMIN_PAGES = ("/audit",)
# A refusal (the tail shows it and stops), not an end (the tail would
# reconnect, and be sent to the login, every few seconds).
_SESSION_ENDED = b'event: refused\ndata: "SESSION_ENDED: the session ended; log in again"\n\n'

Page = Callable[[Request], Awaitable[tuple[str, list[Content]]]]
# Records a refusal in the audit log: (the page's path, the error, the
# principal if one was authenticated, the client's address, the aggregate
# the page named). ``RefusedCommands.console``.
OnRefused = Callable[[str, ChronicleError, Principal | None, str, str], Awaitable[None]]
# Counts an administrator's action (a rebuild, a replay) the policy refused;
# the servicer that refused it audited it already. ``Metrics.console_refused``.
OnActionRefused = Callable[[ChronicleError], None]


def check_console_exposure(
    *, listen: str, auth: bool, tls: bool, path_prefix: str = "", public_origin: str = ""
) -> list[str]:
    """The console beyond loopback needs ``--auth`` (``INSECURE_LISTEN``;
    ``--insecure`` does not stretch to it: a browser console without a login
    is open to every page the operator's browser visits). Returns warnings."""
    if is_loopback(listen) and (path_prefix or public_origin) and not auth:
        # A path prefix and a public origin are for a reverse proxy, and a
        # proxy that forwards the console's own address as the Host (nginx's
        # default) gets past the loopback-only answer: whoever reaches the
        # proxy reads everything.
        behind = " and ".join(
            filter(None, (path_prefix and f"at {path_prefix}", public_origin and f"as {public_origin}"))
        )
        return [
            f"the console {behind} (behind a reverse proxy) has authentication off: a proxy in front opens it to"
            " whoever reaches the proxy, as the anonymous caller. Turn on --auth"
        ]
    if is_loopback(listen):
        return []
    if not auth:
        raise ConfigurationError(
            f"refusing to serve the console on {listen} with authentication off: anyone who can reach it could"
            " read everything. Turn on --auth, or serve the console on 127.0.0.1",
            reason="INSECURE_LISTEN",
            metadata={"listen": listen},
        )
    if not tls:
        return [
            f"the console on {listen} serves plaintext beyond loopback: the credential typed at its login and"
            " its session cookie cross the network in the clear; serve TLS (--tls-cert-file, --tls-key-file)"
            " unless a TLS-terminating proxy in front is its only client"
        ]
    return []


def _host_of(header: str) -> str:
    if header.startswith("["):
        return header.partition("]")[0] + "]"
    return header.rpartition(":")[0] if ":" in header else header


def _status_of(error: ChronicleError) -> int:
    if isinstance(error, PermissionDenied):
        return 403
    if isinstance(error, (ResourceNotFound, AggregateNotFound)):
        return 404
    if isinstance(error, InvalidInput):
        return 400
    if isinstance(error, Unauthenticated):
        return 401
    if isinstance(error, ValidationError):  # FAILED_PRECONDITION: REACTION_RUNS_ELSEWHERE, say
        return 409
    return 503


def _heading_of(status: int) -> str:
    """A page's heading for an error answered ``status``: a 503 is the
    store (or another part) out of reach for now, not a refusal by the
    policy or of the input, and is headed so."""
    return "Unavailable" if status == 503 else "Refused"


class Console:
    def __init__(
        self,
        parts: views.Parts,
        *,
        authenticator: Authenticator | None,
        session_idle_seconds: float = 3600.0,
        on_refused: OnRefused | None = None,
        on_action_refused: OnActionRefused | None = None,
        path_prefix: str = "",
        public_origin: str = "",
    ) -> None:
        """``on_refused``: records a refused login and a page the policy
        denied (the audit log, as the API's refusals). ``on_action_refused``:
        counts an action the policy denied (audited by its RPC).
        ``path_prefix``: the path the console is served under behind a
        reverse proxy (``/chronicle``; checked by the settings), "" at the root.
        ``public_origin``: the origin browsers reach it at through that proxy
        (``https://ops.example.com``; checked by the settings), "" for none."""
        self._parts = parts
        self._path_prefix = path_prefix
        self._public_origin = public_origin
        self._on_refused = on_refused
        self._on_action_refused = on_action_refused
        # Seals the pages' cursors: a key of this console's own, for as long as it runs.
        self._cursors = Cursors()
        # Without --auth the sessions are anonymous: a CSRF token and notices, no login.
        self._auth = authenticator is not None
        self._sessions = Sessions(authenticator, idle_seconds=session_idle_seconds)
        self._http = HttpServer(self._handle, base_headers=SECURITY_HEADERS)
        self._https = False
        self.address = ""

    async def start(self, listen: str, *, tls: ssl.SSLContext | None = None) -> None:
        host, _, port = listen.rpartition(":")
        try:
            await self._http.start(host, int(port), tls=tls)
        except OSError as error:
            raise ConfigurationError(f"cannot serve the console on {listen}: {error}", reason="BIND_FAILED") from error
        self._https = tls is not None
        self.address = f"{host}:{self._http.port}"
        if self._parts.load is not None:
            self._parts.load.start()

    def url(self, api_address: str) -> str:
        """The URL this console is advertised at to the other replicas (once
        started), for a replica whose API is at ``api_address``: its path
        prefix included, which it answers under on its own port too."""
        if self._public_origin:  # where a browser reaches it: through the proxy
            return self._public_origin + self._path_prefix
        return console_url(bound=self.address, https=self._https, api_address=api_address) + self._path_prefix

    @property
    def _secure(self) -> bool:
        """Whether browsers reach the console over HTTPS: it serves TLS, or
        a proxy in front does (``public_origin``). Then its cookie is
        Secure and its answers carry Strict-Transport-Security."""
        return self._https or self._public_origin.startswith("https://")

    async def stop(self) -> None:
        if self._parts.load is not None:
            await self._parts.load.stop()
        await self._http.stop()

    # -- requests ------------------------------------------------------------

    async def _handle(self, request: Request) -> Response:
        inside = self._inside(request.path)
        if inside is None:
            response = _plain(404, f"not found: this console is served under {self._path_prefix}/")
        else:
            # Every link, redirect and cookie path of this request is under the prefix (html.console_path).
            token = path_prefix.set(self._path_prefix)
            try:
                response = await self._respond(replace(request, path=inside))
            finally:
                path_prefix.reset(token)
        if self._secure and _host_of(request.headers.get("host", "")).lower() != "localhost":
            response.headers = [*response.headers, STRICT_TRANSPORT_SECURITY]
        return response

    def _inside(self, path: str) -> str | None:
        """``path`` from the console's root (``/chronicle/log`` is ``/log``
        under the prefix ``/chronicle``; the prefix alone is ``/``), or None
        for a path outside the prefix. The prefix is compared as it is
        sent: it holds no character a browser would encode (see settings).
        No X-Forwarded-Prefix is read: see docs/console.md."""
        prefix = self._path_prefix
        if not prefix:
            return path
        if path == prefix:
            return "/"
        return path.removeprefix(prefix) if path.startswith(prefix + "/") else None

    async def _respond(self, request: Request) -> Response:
        if not self._auth and _host_of(request.headers.get("host", "")) not in _LOOPBACK_HOSTS:
            return _plain(421, "this console answers only requests addressed to a loopback host")
        if request.path.startswith("/static/"):
            return _static(request.path.removeprefix("/static/"))
        if self._auth and request.path == "/login":
            return await self._login(request)
        new_cookie = ""
        session = self._sessions.find(request.cookies.get(COOKIE, ""))
        if session is None and self._auth:
            return _redirect("/login")
        if session is None:
            # Anonymous: a session of its own from the first page on (a form
            # posted without one has no token to show, and is refused below).
            new_cookie, session = self._sessions.open_anonymous()
        if request.method == "POST" and not self._post_allowed(request, session, fresh=bool(new_cookie)):
            return _plain(403, "this form did not come from this console (its origin or CSRF token is wrong)")
        principal = session.principal if session.principal is not None else ANONYMOUS
        token = current_principal.set(principal)
        # The browser's address, for what the servicers audit (an
        # administrator's action), as the gate sets the RPC's peer.
        peer_token = current_peer.set(lambda: request.peer)
        try:
            response = await self._route(request, session, principal)
        finally:
            current_peer.reset(peer_token)
            current_principal.reset(token)
        if new_cookie:
            response.headers = [*response.headers, ("Set-Cookie", _cookie(new_cookie, secure=self._secure))]
        return response

    def _post_allowed(self, request: Request, session: Session, *, fresh: bool) -> bool:
        # The console's own origin, always: a form that names none is refused, as the login is.
        if not self._own_origin(request) or fresh:  # a session made just now gave no form its token
            return False
        return same_token(request.form.get("csrf_token", ""), session.csrf_token)

    def _own_origin(self, request: Request) -> bool:
        """The request's Origin is this console: its scheme (https when it
        serves TLS) and the host and port the request was addressed to. With
        a public origin (behind a TLS-terminating proxy, which the browser
        names while the request reaches the console over plain HTTP): that
        origin, or the console's own at a loopback name (an operator through
        an SSH tunnel), not ``http://`` and the public host (a plaintext page
        at that name is not the console). Never a header a proxy adds
        (X-Forwarded-Proto, X-Forwarded-Host): anyone who reaches the
        console directly could send one."""
        scheme = "https" if self._https else "http"
        origin = request.headers.get("origin")
        host = request.headers.get("host", "")
        if self._public_origin:
            direct = _host_of(host) in _LOOPBACK_HOSTS and origin == f"{scheme}://{host}"
            return origin == self._public_origin or direct
        return origin == f"{scheme}://{host}"

    async def _route(self, request: Request, session: Session, principal: Principal) -> Response:
        path = request.path
        parts = self._parts
        if request.method == "POST" and path == "/logout":
            self._sessions.log_out(request.cookies.get(COOKIE, ""))
            return _redirect("/login" if self._auth else "/log", clear_cookie=True, secure=self._secure)
        if request.method == "POST" and path.startswith("/projections/") and path.endswith("/rebuild"):
            name = unquote(path.removeprefix("/projections/").removesuffix("/rebuild"))
            try:
                await views.rebuild_projection(parts, name)
            except ChronicleError as error:
                return self._action_refused(error, session, principal, "/projections")
            session.tell("/projections", f"Rebuilding {name} from the start of the log.")
            return _redirect("/projections")
        group_action = _group_action(path)
        if request.method == "POST" and group_action is not None:
            return await self._group_action(request, session, principal, *group_action)
        if request.method == "POST" and _reaction_action(path) is not None:
            return await self._reaction_action(request, session, principal)
        if not _is_action(path) and not _is_page(path):
            # Neither a page nor an action (``/groups/NAME/nope``): there is
            # nothing there, whatever the method.
            return self._page(
                404, "Not found", [tag("p", "There is no such page or action.")], session, principal, path
            )
        if request.method != "GET" or _is_action(path):
            # An action's address asked with GET is not a page of that name
            # (a group called "billing/replay"): it wants a POST.
            refused = _plain(405, "method not allowed")
            refused.headers = [("Allow", "POST" if _is_action(path) else "GET")]
            return refused
        if path in _ADMIN_PAGES and not self._may_read_audit(principal):
            try:
                await audit.refused_by_the_rpc(parts.admin)  # QueryAudit's refusal: audited once, by the RPC
            except ChronicleError as error:
                return self._action_refused(error, session, principal, path)
        query = dict(request.query)
        unknown = sorted(set(query) - _query_fields(path))
        if unknown:
            # A misspelled filter (?command_id= for ?command=) would show
            # the whole, unfiltered page as if it were the filtered one.
            refusal = _unknown_fields(path, unknown)
            if path == "/tail/events":
                return _plain(400, f"{refusal.reason}: {refusal.message}")
            return self._page(400, "Refused", [views.error_box(refusal)], session, principal, path)
        csrf_token = session.csrf_token
        # The pages' cursors are bound to the session (none without --auth).
        session_key = request.cookies.get(COOKIE, "") if self._auth else ""
        notice = session.take_notice(path)
        pages: dict[str, Callable[[], Awaitable[tuple[str, list[Content]]]]] = {
            "/log": lambda: views.log_page(parts, query, cursors=self._cursors, session=session_key),
            "/audit": lambda: self._audit_page(query, session_key),
            "/tail": lambda: views.tail_page(parts),
            "/projections": lambda: views.projections_page(parts, notice, csrf_token),
            "/reactions": lambda: views.reactions_page(parts),
            "/load": lambda: views.load_page(parts),
            "/cluster": lambda: views.cluster_page(parts),
            "/groups": lambda: groups.groups_page(parts),
        }
        refresh = {
            "/projections": 2,
            "/reactions": 2,
            "/groups": 2,
            "/cluster": 2,
            "/load": max(1, round(parts.load.interval)) if parts.load else None,
        }
        if path == "/":
            return _redirect("/log")
        if path == "/tail/events":
            try:
                for field in ("shown", "event"):
                    if field in query and "after" not in query:
                        # ``shown`` and ``event`` are only ever sent with the
                        # ``after`` they go with: without it, a default would
                        # resume wrong.
                        raise InvalidInput.for_field(
                            field, "is a resume point only with the after it goes with", reason="INVALID_POSITION"
                        )
                after = views.query_number(query, "after", default=0, reason="INVALID_POSITION", minimum=0)
                resume = TailResume.starting(after, query.get("shown", ""), query.get("event", ""))
            except ChronicleError as error:
                return _plain(_status_of(error), f"{error.reason}: {error.message}")

            async def audit_refusal(error: ChronicleError) -> None:
                # A tail the policy refused is audited as a refused page is (and a denied Subscribe).
                if isinstance(error, PermissionDenied) and self._on_refused is not None:
                    await self._on_refused(path, error, principal, request.peer, "")

            stream = views.tail_stream(parts, after, resume=resume, on_refused=audit_refusal)
            # The stream runs in the connection's task: the principal is set there.
            return Response(
                200, content_type="text/event-stream", stream=_with_principal(stream, principal, self._live(request))
            )
        render = pages.get(path)
        current = path
        aggregate_id = ""
        if render is None and path.startswith("/aggregates/") and len(path) > len("/aggregates/"):
            aggregate_id = unquote(path.removeprefix("/aggregates/"))
            render = lambda: views.aggregate_page(parts, aggregate_id, query)  # noqa: E731
            current = "/log"
        # /groups/NAME/confirm (a group's name has no "/": /groups/confirm is the group "confirm")
        confirming, _, subpage = path.removeprefix("/groups/").rpartition("/")
        if render is None and path.startswith("/groups/") and confirming and subpage == "confirm":
            group = unquote(confirming)
            action = query.get("action", "")
            render = lambda: groups.confirm_page(parts, group, action, csrf_token, notice)  # noqa: E731
            current = "/groups"
        if render is None and path.startswith("/groups/") and len(path) > len("/groups/"):
            group = unquote(path.removeprefix("/groups/"))
            render = lambda: groups.group_page(parts, group, query, csrf_token, notice)  # noqa: E731
            current = "/groups"
        if render is None and path.startswith("/projections/") and len(path) > len("/projections/"):
            projection = unquote(path.removeprefix("/projections/"))
            render = lambda: parked.projection_page(  # noqa: E731
                parts, projection, query, cursors=self._cursors, session=session_key, csrf_token=csrf_token
            )
            current = "/projections"
        if render is None and path.startswith("/reactions/") and len(path) > len("/reactions/"):
            reaction = unquote(path.removeprefix("/reactions/"))
            render = lambda: parked.reaction_page(  # noqa: E731
                parts,
                reaction,
                query,
                cursors=self._cursors,
                session=session_key,
                csrf_token=csrf_token,
                notice=notice,
            )
            current = "/reactions"
        if render is None:
            return self._page(404, "Not found", [tag("p", "There is no such page.")], session, principal, current)
        try:
            title, content = await render()
        except ChronicleError as error:
            if path in _AUDITED_BY_THEIR_RPC:
                return self._action_refused(error, session, principal, current)
            if isinstance(error, PermissionDenied) and self._on_refused is not None:
                await self._on_refused(path, error, principal, request.peer, aggregate_id)
            status = _status_of(error)
            return self._page(status, _heading_of(status), [views.error_box(error)], session, principal, current)
        scripts = ["/static/console.js"] if path == "/tail" else []
        return self._page(200, title, content, session, principal, current, refresh.get(path), scripts)

    async def _audit_page(self, query: dict[str, str], session_key: str) -> tuple[str, list[Content]]:
        """The audit log through QueryAudit, newest first; the *Older*
        cursor sealed and bound to the session and the filters."""
        filters = audit.AuditFilters.of(query)
        bound_to = f"audit\x00{session_key}\x00{filters.listing()}"
        after = query.get("after", "")
        point = audit.open_point(self._cursors, after, bound_to=bound_to) if after else None
        entries, following = await audit.audit_entries(self._parts.admin, filters, point)
        cursor = audit.seal_point(self._cursors, following, bound_to=bound_to) if following else ""
        return "Audit log", audit.audit_view(entries, filters, first=point is None, next_cursor=cursor)

    async def _reaction_action(self, request: Request, session: Session, principal: Principal) -> Response:
        """Replay or dismiss one parked command, or all of them. Those ask
        an administrator first: a page that says how many, with a form that
        carries their count and the digest of their ids; confirmed, exactly
        those are acted on, and if they changed meanwhile nothing is done
        and the confirmation is shown again (anyone else is refused by the
        all-RPC at once). Each is its RPC: the admin grant, audited, on the
        replica that runs it."""
        found = _reaction_action(request.path)
        assert found is not None
        name, action = found
        here = "/reactions/" + segment(name)
        parts = self._parts
        form = request.form
        try:
            if action.endswith("-all") and not parts.authorizer.grant(principal).admin:
                said = await parked.refused_by_the_rpc(parts, name, action)
            elif action.endswith("-all"):
                if "digest" not in form:
                    title, content = parked.confirm_page(
                        name, action, await parked.all_parked(parts, name), session.csrf_token
                    )
                    return self._page(200, title, content, session, principal, "/reactions")
                try:
                    confirmed = await parked.confirmed_commands(parts, name, form)
                except Changed as changed:
                    title, content = parked.confirm_page(
                        name,
                        action,
                        await parked.all_parked(parts, name),
                        session.csrf_token,
                        notice=parked.changed_notice(changed),
                    )
                    return self._page(409, title, content, session, principal, "/reactions")
                act = parked.replay_all if action == "replay-all" else parked.dismiss_all
                said = await act(parts, name, confirmed)
            else:
                command_id = form.get("command_id", "")
                act_on_one = parked.replay_command if action == "replay" else parked.dismiss_command
                said = await act_on_one(parts, name, command_id)
        except StoppedPartway as stopped:
            return self._action_refused(stopped.error, session, principal, "/reactions", back=here, done=stopped.done)
        except ChronicleError as error:
            return self._action_refused(error, session, principal, "/reactions", back=here)
        session.tell(here, said)
        return _redirect(here)

    async def _group_action(
        self, request: Request, session: Session, principal: Principal, name: str, action: str
    ) -> Response:
        """A parked event replayed or dismissed, or all of them (confirmed
        first), or the group's settings updated: through the RPC, then back
        to the group's page with a notice (POST-redirect-GET)."""
        parts = self._parts
        group_page = groups.group_path(name)
        try:
            if action in groups.ALL_ACTIONS:
                try:
                    done = await groups.act_on_all(parts, name, action, request.form)
                except Changed as changed:
                    confirm = groups.group_path(name, "confirm")
                    session.tell(confirm, groups.changed_notice(changed))
                    return _redirect(url(confirm, action=action))
                told = groups.notice_of(action, done)
            elif action == "settings":
                told = await groups.update_settings(parts, name, request.form)
            elif action == "replay":
                replaying = await groups.replay_parked(parts, name, request.form.get("event_id", ""))
                told = f"Replaying {replaying} parked event(s)."
            else:
                dismissed = await groups.dismiss_parked(parts, name, request.form.get("event_id", ""))
                told = f"Dismissed {dismissed} parked event(s)."
        except ChronicleError as error:
            return self._action_refused(error, session, principal, "/groups", back=group_page)
        session.tell(group_page, told)
        return _redirect(group_page)

    def _action_refused(
        self,
        error: ChronicleError,
        session: Session,
        principal: Principal,
        current: str,
        *,
        back: str = "",
        done: str = "",
    ) -> Response:
        """An administrator's action refused: its RPC audited it; a refusal
        by the policy is counted as the console's page refusals are.
        ``done``: what an all-action did before the failure, said first."""
        if isinstance(error, PermissionDenied) and self._on_action_refused is not None:
            self._on_action_refused(error)
        content: list[Content] = [tag("p", done, class_="notice", id="notice")] if done else []
        content.append(views.error_box(error))
        if back:
            content.append(tag("p", link(back, "Back"), class_="back"))
        status = _status_of(error)
        return self._page(status, _heading_of(status), content, session, principal, current)

    def _page(
        self,
        status: int,
        title: str,
        content: list[Content],
        session: Session,
        principal: Principal,
        current: str,
        refresh: int | None = None,
        scripts: list[str] | None = None,
    ) -> Response:
        who = principal.name if principal.authenticated else "anonymous (authentication is off)"
        body = page(
            title,
            *content,
            principal=who,
            # The audit log's link, to those QueryAudit answers.
            audit=self._may_read_audit(principal),
            # The load's link, to those the page shows it to (views.load_page).
            load=not self._parts.authorizer.enforcing or self._parts.authorizer.grant(principal).admin,
            csrf_token=session.csrf_token if self._auth else "",  # its Log out form: no one to log out
            current=current,
            refresh=refresh,
            scripts=scripts or [],
        )
        return Response(status, body.encode())

    def _may_read_audit(self, principal: Principal) -> bool:
        """Whether QueryAudit answers ``principal``: the admin grant (every
        entry), or a tenant's administrator (``tenant_admin``: the RPC
        narrows the page to its tenant's entries). Asked of the policy, not
        by calling QueryAudit, which would read a page of entries to learn it."""
        authorizer = self._parts.authorizer
        return authorizer.grant(principal).admin or bool(authorizer.tenant_administered(principal))

    def _live(self, request: Request) -> Callable[[], bool]:
        """Whether the session of ``request`` still lives (always, without
        ``--auth``: there are no sessions), asked again as a stream goes on."""
        sessions = self._sessions
        if not self._auth:
            return lambda: True
        session_id = request.cookies.get(COOKIE, "")
        return lambda: sessions.still_live(session_id) is not None

    # -- logging in -------------------------------------------------------------

    async def _login(self, request: Request) -> Response:
        if request.method == "GET":
            return Response(200, _login_page().encode())
        if request.method != "POST":
            return _plain(405, "method not allowed")
        if not self._own_origin(request):
            return _plain(403, "this form did not come from this console")
        credential = request.form.get("credential", "").strip()
        try:
            session_id, principal = self._sessions.log_in(credential)
        except Unauthenticated as error:
            log.warning("console login refused: %s", error.reason)
            if self._on_refused is not None:
                await self._on_refused("/login", error, None, request.peer, "")
            return Response(401, _login_page(error).encode())
        log.info("console login: %s (%s)", principal.name, principal.method)
        return _redirect("/log", cookie=session_id, secure=self._secure)


async def _with_principal(
    stream: AsyncIterator[bytes], principal: Principal, live: Callable[[], bool]
) -> AsyncIterator[bytes]:
    """``stream`` as ``principal``: the response is sent after the handler
    returned (and reset the principal), in the connection's own task. It
    ends when ``live`` says the session it was opened under has ended (a
    logout, a JWT that expired, idleness): a tail open in a browser tab must
    not go on showing events to a session that no longer exists (the
    page says so and stops)."""
    current_principal.set(principal)
    try:
        async for chunk in stream:
            if not live():
                yield _SESSION_ENDED
                return
            yield chunk
    finally:
        await stream.aclose()  # type: ignore[attr-defined]


def _login_page(error: ChronicleError | None = None) -> Html:
    form = tag(
        "form",
        tag(
            "label",
            "API key or JWT",
            void("input", type="password", name="credential", autocomplete="off", required="", autofocus=""),
        ),
        tag("button", "Log in", type="submit"),
        method="post",
        action="/login",
        class_="login",
    )
    return page("Log in", *([views.error_box(error)] if error else []), form)


# What may be done to a group's parked events (``/groups/NAME/ACTION``, POST only).
_GROUP_ACTIONS = ("replay", "dismiss", "settings", *groups.ALL_ACTIONS)


def _group_action(path: str) -> tuple[str, str] | None:
    """The group and the action ``path`` names, if it names one."""
    if not path.startswith("/groups/"):
        return None
    name, _, action = path.removeprefix("/groups/").rpartition("/")
    return (unquote(name), action) if name and action in _GROUP_ACTIONS else None


def _is_action(path: str) -> bool:
    """Whether ``path`` names one of the console's actions (POST only)."""
    return (
        path == "/logout"
        or (path.startswith("/projections/") and path.endswith("/rebuild"))
        or _group_action(path) is not None
        or _reaction_action(path) is not None
    )


_PAGES = frozenset(
    {"/", "/log", "/audit", "/tail", "/tail/events", "/projections", "/reactions", "/load", "/cluster", "/groups"}
)


def _is_page(path: str) -> bool:
    """Whether ``path`` may name a page (one of its name, or of one thing:
    an aggregate, whose id may hold "/"; a group, a projection or a
    reaction, whose name is one segment, quoted; a group's confirmation)."""
    if path in _PAGES or (path.startswith("/aggregates/") and len(path) > len("/aggregates/")):
        return True
    for prefix in ("/groups/", "/projections/", "/reactions/"):
        name = path.removeprefix(prefix)
        if path.startswith(prefix) and name and ("/" not in name or (prefix == "/groups/" and _confirms(name))):
            return True
    return False


def _confirms(rest: str) -> bool:
    name, _, subpage = rest.rpartition("/")
    return bool(name) and "/" not in name and subpage == "confirm"


def _reaction_action(path: str) -> tuple[str, str] | None:
    """The reaction and the action (``replay``, ``dismiss``, ``replay-all``,
    ``dismiss-all``) ``path`` names, if it names one (the name is quoted: a
    "/" in it is no action's)."""
    if not path.startswith("/reactions/"):
        return None
    name, _, action = path.removeprefix("/reactions/").rpartition("/")
    if not name or action not in _REACTION_ACTIONS:
        return None
    return unquote(name), action


# The query fields each page reads (every other one is refused): by path,
# then by the prefix of a page of one thing (its name after it).
_PAGE_QUERY_FIELDS: dict[str, frozenset[str]] = {
    "/log": frozenset({"q", "after"}),
    "/audit": frozenset({*audit.FILTERS, "after"}),
    "/tail/events": frozenset({"after", "shown", "event"}),
}
_NAMED_PAGE_QUERY_FIELDS = (
    ("/aggregates/", frozenset({"from", "version"})),
    ("/projections/", frozenset({"after"})),
    ("/reactions/", frozenset({"after"})),
)


def _query_fields(path: str) -> frozenset[str]:
    """The query fields the page at ``path`` reads (none for a page that
    takes no query: ``/cluster``, ``/load``, the lists)."""
    if path in _PAGE_QUERY_FIELDS:
        return _PAGE_QUERY_FIELDS[path]
    if path.startswith("/groups/") and len(path) > len("/groups/"):
        confirming, _, subpage = path.removeprefix("/groups/").rpartition("/")
        # A group's parked events page by ListParked's token (page); after, a position, is still read.
        return frozenset({"action"}) if confirming and subpage == "confirm" else frozenset({"after", "page"})
    for prefix, fields in _NAMED_PAGE_QUERY_FIELDS:
        if path.startswith(prefix) and len(path) > len(prefix):
            return fields
    return frozenset()


def _unknown_fields(path: str, unknown: list[str]) -> InvalidInput:
    known = ", ".join(sorted(_query_fields(path))) or "none"
    names = ", ".join(repr(name[:40]) for name in unknown[:5])
    return InvalidInput(
        f"this page reads no query field {names} (it reads: {known})",
        reason="UNKNOWN_QUERY_FIELD",
        metadata={"fields": ",".join(name[:40] for name in unknown[:5])},
    )


def _plain(status: int, text: str) -> Response:
    return Response(status, text.encode(), "text/plain; charset=utf-8")


def _redirect(
    location: str, *, cookie: str | None = None, clear_cookie: bool = False, secure: bool = False
) -> Response:
    headers = [("Location", console_path(location))]
    if cookie is not None:
        headers.append(("Set-Cookie", _cookie(cookie, secure=secure)))
    if clear_cookie:
        headers.append(("Set-Cookie", _cookie("", secure=secure) + "; Max-Age=0"))
    return Response(int(HTTPStatus.SEE_OTHER), b"", headers=headers)


def _cookie(session_id: str, *, secure: bool) -> str:
    # Under a path prefix the browser sends the session to the console's paths only.
    path = path_prefix.get() or "/"
    return f"{COOKIE}={session_id}; Path={path}; HttpOnly; SameSite=Strict" + ("; Secure" if secure else "")


def _static(name: str) -> Response:
    content_type = _STATIC.get(name)
    if content_type is None:
        return _plain(404, "not found")
    data = resources.files("service.console").joinpath("static", name).read_bytes()
    return Response(200, data, content_type)
