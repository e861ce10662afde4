"""How a remote client reaches its servers: the proxy the environment names, and the TLS it trusts.

Checks (`OpenAIGen`, httpx) and stream sessions (`RemoteStream`, websockets) take the same route to the same
server: the proxy httpx would pick from the environment (`proxy_for`: ``HTTP_PROXY`` for ``http``/``ws``,
``HTTPS_PROXY`` for ``https``/``wss``, ``ALL_PROXY`` for both, ``NO_PROXY`` bypassing; websockets' own reading
prefers the HTTPS proxy even for ``ws://`` and ignores ``ALL_PROXY``), and one ``verify`` (httpx's meaning) for
both (`ssl_context`; `checks_transport` keeps the environment's proxies for checks given one).

The proxy table is httpx's own (``httpx._utils``, what its clients build their mounts with): the standard
library reads ``NO_PROXY`` otherwise (".example.com", a "*" among other names, scheme- or port-qualified
names, IPv6), and some sessions would take another route than the checks. Should httpx move those helpers,
the standard library's reading is the fallback.

A kept-alive connection must not hand one request's reply to the next: an engine or proxy that writes bytes past a
reply (a second reply to one request) leaves them in the HTTP parser's buffer, where httpcore's "is the idle socket
readable" test does not look, and the next request on that connection read them as its reply (rt57d F3).
`LeftoverCheck`, a request's ``trace`` extension (httpx's public hook into httpcore), marks such a connection
failed as its response closes, so httpcore closes it instead of reusing it. Only httpcore's private attributes
reach that buffer (`h11_state_of`); should they move, nothing is dropped and `tests/test_rt57d_engine_replies.py`
fails. A second reply written a moment later (after the next request went out on the connection) is in no buffer
yet: HTTP/1.1 cannot tie a reply to its request, so `ReplyIds` asks each reply to prove itself by its ``id``
(unique per reply on every engine that sends one): a reply repeating the id of the reply read before it on its
connection is that reply's late duplicate, and once the engine has shown ids a connection is kept alive only after
a reply with an id of its own (rt64e F1); never after an error status, which carries none (rt66c F1).

What a client builds from a server's reply or an HTTP library's error (`decision.error`, which listeners, audit
logs and GuardViolation messages carry) never shows a credential the client holds: a server or gateway that
echoes one ("Invalid API key: sk-...") has it masked (`SecretMask`, rt61c F3). `same_servers` says whether
stream sessions go to the checks' own servers, which alone may receive the checks' credentials (rt61c F5).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import os
import re
import secrets
import ssl
import threading
import urllib.parse
import urllib.request
import weakref
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TypeAlias

logger = logging.getLogger("qwenguard")

__all__ = [
    "LeftoverCheck",
    "ReplyIds",
    "SecretMask",
    "Verify",
    "checks_transport",
    "drop_if_leftover",
    "h11_state_of",
    "proxy_for",
    "reply_id",
    "same_servers",
    "ssl_context",
    "without_password",
]

#: What ``verify`` may be, in httpx's meaning: verify against the default CAs (True) or not at all (False),
#: a CA bundle file or directory, or a ready ``ssl.SSLContext``.
Verify: TypeAlias = "bool | str | os.PathLike[str] | ssl.SSLContext"


#: What a switch read from an environment variable says: never a CA bundle's path.
_SWITCH_WORDS = frozenset({"true", "false", "yes", "no", "on", "off", "1", "0", ""})


def ssl_context(verify: Verify) -> ssl.SSLContext:
    """``verify`` as an ``ssl.SSLContext``, with httpx's meaning, so checks and streams trust the same CAs.

    ``True``: httpx's default context (certifi's CAs, or ``SSL_CERT_FILE`` / ``SSL_CERT_DIR`` when set);
    ``False``: no verification; a path: that CA bundle (a file) or CA directory; a context: itself."""
    if isinstance(verify, ssl.SSLContext):
        return verify
    if isinstance(verify, bool):
        import httpx

        return httpx.create_ssl_context(verify=verify)
    if isinstance(verify, (str, os.PathLike)):
        path = os.fspath(verify)
        if isinstance(verify, str) and verify.strip().lower() in _SWITCH_WORDS:
            # verify="false" from an environment variable is a path to httpx: a bare FileNotFoundError (rt53d).
            raise ValueError(
                f"verify={verify!r} is a string, read as a CA bundle path: pass verify=False or True (a bool), "
                f"or the path of a CA bundle file or directory"
            )
        if os.path.isdir(path):
            return ssl.create_default_context(capath=path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"verify={verify!r}: no CA bundle file or directory at {path!r}")
        return ssl.create_default_context(cafile=path)
    raise TypeError(f"verify must be a bool, a CA bundle path or an ssl.SSLContext, got {type(verify).__name__}")


def _environment_proxies() -> list[tuple[Any, str | None]]:
    """The proxy table httpx builds from the environment (``trust_env``), most specific pattern first."""
    from httpx._utils import URLPattern, get_environment_proxies

    # The checks' client builds its mounts with exactly these two helpers and matches them in this order
    # (`httpx.AsyncClient._transport_for_url`). The standard library's `proxy_bypass_environment` reads
    # NO_PROXY otherwise (".example.com", a "*" among other names, scheme- or port-qualified names, IPv6):
    # with it, some stream sessions would again take another route than the checks.
    return sorted((URLPattern(pattern), proxy) for pattern, proxy in get_environment_proxies().items())


def proxy_for(url: str) -> str | None:
    """The proxy a request of httpx to ``url`` goes through by the environment's rules (None: direct).

    ``ws://`` and ``wss://`` are asked as ``http://`` and ``https://``: ``HTTP_PROXY`` for ``ws://``,
    ``HTTPS_PROXY`` for ``wss://``, ``ALL_PROXY`` for both, a host in ``NO_PROXY`` (or ``NO_PROXY=*``)
    goes direct; a proxy without a scheme is ``http://``, as httpx reads it."""
    if url.startswith(("ws://", "wss://")):
        url = "http" + url[2:]
    import httpx

    target = httpx.URL(url)
    try:
        table = _environment_proxies()
    except ImportError:  # pragma: no cover - an httpx that moved its helpers: the standard library's reading
        proxies = urllib.request.getproxies()
        if urllib.request.proxy_bypass_environment(target.host, proxies):  # type: ignore[attr-defined]
            return None
        proxy = proxies.get(target.scheme) or proxies.get("all")
        return None if not proxy else proxy if "://" in proxy else "http://" + proxy
    for pattern, proxy in table:
        if pattern.matches(target):
            return proxy
    return None


def without_password(url: str) -> str:
    """``url`` (a proxy's, a server's) for a message, a log line or a repr: its password, if it has one, as
    ``***``; a user name without a password too (``https://TOKEN@host``: services that take a token so); the rest
    as written. Never raises: a URL too broken to parse loses everything between ``//`` and its last ``@`` instead
    (a message about a bad URL must not show its password either)."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:  # an unclosed IPv6 bracket, ...
        return re.sub(r"(//)[^/?#]*@", r"\1***@", url)
    # The userinfo ends at the netloc's last "@", as urlsplit reads it; the host and port stay as written
    # (``hostname`` would drop an IPv6 address's brackets, ``port`` raise for a bad one).
    userinfo, at, hostport = parts.netloc.rpartition("@")
    if not at:
        return url
    if ":" not in userinfo:  # a user alone: a token, as often as a name
        return urllib.parse.urlunsplit(parts._replace(netloc=f"***@{hostport}"))
    user = userinfo.split(":", 1)[0]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:***@{hostport}"))


def credentials_apart(url: str) -> tuple[str, Any]:
    """``url`` without its ``user:password@``, and the ``httpx.BasicAuth`` httpx would make of them (None without):
    a request sent so carries the same credentials, and httpx's own log line ("HTTP Request: GET ...", INFO) and
    errors never see them. ``url``: a validated base URL (`replicas.base_urls`)."""
    import httpx

    parts = urllib.parse.urlsplit(url)
    bare = urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
    parsed = httpx.URL(url)
    return bare, (httpx.BasicAuth(parsed.username, parsed.password) if parsed.userinfo else None)


def checks_transport(verify: Verify, *, max_connections: int) -> Any:
    """An ``httpx.AsyncBaseTransport`` for `OpenAIGen` that verifies TLS with ``verify`` and still goes
    through the proxy the environment names for each URL (`proxy_for`).

    An httpx client given a transport reads no proxy from the environment; this one reads the table once, on
    its first request (as a client does when it is made), and keeps one ``httpx.AsyncHTTPTransport`` per
    proxy (None: direct), each with ``verify``'s context and the client's connection limits, and each giving a
    cancelled check's connection back to its pool (`pool_guard.SlotKeepingTransport`).

    ``max_connections``: the checks' (``max_concurrency``, one a request in flight); each pool holds one more, for
    the ``/models`` read, which takes no check's slot: with ``max_concurrency=1``, a ``/models`` that hung behind a
    proxy held the one connection, and every check waited for it out to its deadline (rt68g F2)."""
    import httpx

    from .pool_guard import SlotKeepingTransport

    context = ssl_context(verify)
    size = max_connections + 1
    limits = httpx.Limits(max_connections=size, max_keepalive_connections=size)

    class EnvProxyTransport(httpx.AsyncBaseTransport):
        keeps_slots = True  # each route is a `SlotKeepingTransport` (`pool_guard.slot_keeping`)

        def __init__(self) -> None:
            self._table: list[tuple[Any, str | None]] | None = None
            self._routes: dict[str | None, httpx.AsyncBaseTransport] = {}
            self._lock = threading.Lock()
            self._pid = os.getpid()

        def _route(self, url: httpx.URL) -> httpx.AsyncBaseTransport:
            if self._pid != os.getpid():
                # A forked child: the pools are the parent's (its sockets, its event loop), and so may the lock
                # be; the client starts its own loop there (`OpenAIGen._start`) and these start anew with it.
                self._pid, self._lock, self._routes, self._table = os.getpid(), threading.Lock(), {}, None
            with self._lock:
                if self._table is None:
                    self._table = _environment_proxies()
                proxy = next((p for pattern, p in self._table if pattern.matches(url)), None)
                route = self._routes.get(proxy)
                if route is None:
                    pool = httpx.AsyncHTTPTransport(verify=context, limits=limits, proxy=proxy)
                    route = self._routes[proxy] = SlotKeepingTransport(pool)
                return route

        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            return await self._route(request.url).handle_async_request(request)

        async def aclose(self) -> None:
            with self._lock:
                routes, self._routes, self._table = list(self._routes.values()), {}, None
            for route in routes:
                await route.aclose()

    return EnvProxyTransport()


#: The links from an httpx response's stream to its HTTP/1.1 connection, all private: httpx's ``BoundAsyncStream``
#: and httpcore's ``PoolByteStream`` hold the stream they wrap in ``_stream``, httpx's transport stream holds
#: httpcore's in ``_httpcore_stream``, and httpcore's ``HTTP11ConnectionByteStream`` holds its connection in
#: ``_connection``, whose parser (an ``h11.Connection``, public API from there) is ``_h11_state``.
_STREAM_LINKS = ("_stream", "_httpcore_stream")
_MOST_LINKS = 8


def h11_state_of(response: Any) -> Any:
    """The ``h11.Connection`` of the HTTP/1.1 connection an httpx response came on, or None (another transport: a
    test's, HTTP/2; or an httpx/httpcore whose private attributes moved)."""
    try:
        import h11
    except ImportError:  # pragma: no cover - httpcore needs it
        return None
    node = getattr(response, "stream", None)
    for _ in range(_MOST_LINKS):
        if node is None:
            return None
        state = getattr(getattr(node, "_connection", None), "_h11_state", None)
        if isinstance(state, h11.Connection):
            return state
        node = next((n for n in (getattr(node, link, None) for link in _STREAM_LINKS) if n is not None), None)
    return None


def drop_if_leftover(response: Any, *, reuse: bool = True) -> int | None:
    """Called as ``response`` closes, before httpcore releases its connection: when the connection already holds
    bytes past the response, or ``reuse`` is false (its reply did not prove itself: `ReplyIds`), it is marked failed
    (h11's ``send_failed``), so that httpcore closes it instead of keeping it alive, and the next request reads its
    reply from a new connection. The number of bytes left over (0: none, or the response was not read to its end,
    and httpcore closes the connection itself); None when the connection cannot be reached (`h11_state_of`). Bytes
    that arrive while the connection is idle lie in the socket, which httpcore tests before it reuses it; bytes that
    arrive after the next request went out are caught by `ReplyIds`."""
    state = h11_state_of(response)
    if state is None:
        return None
    import h11

    if state.their_state is not h11.DONE or state.our_state is not h11.DONE:
        return 0
    leftover = len(state.trailing_data[0])
    if leftover or not reuse:
        state.send_failed()
    return leftover


class LeftoverCheck:
    """The ``trace`` extension of one request (``client.stream(..., extensions={"trace": check})``): as httpcore
    starts to close its response ("http11.response_closed.started", before the connection is released), it runs
    `drop_if_leftover` on ``response``, which the caller sets once the response is open. ``leftover``: the bytes
    found past the response (None: its connection could not be reached, or the response never closed so).
    ``reuse``: set false by the caller to have the connection closed whatever is left over. With ``ids``, the body
    read into ``chunks`` must prove itself first (`ReplyIds.read`; httpx closes a response as its last chunk is
    read, before the caller could look at it; ``asked``, set by the caller as the request goes out, says what body
    it sent): ``fresh`` and ``ident`` say what it showed; and a reply of another status than 200 never keeps its
    connection (it carries no id, and the answer it stood for may still come)."""

    EVENT = "http11.response_closed.started"

    def __init__(self, ids: ReplyIds | None = None, *, named: str | None = None, url: str = "", again: int = 0):
        self.response: Any = None
        self.asked: bytes | None = None  # the digest of the request's body as sent (`request_digest_of`)
        self.leftover: int | None = None
        self.reuse = True
        self.ids = ids
        self.named = named  # the start of the request's X-Request-Id (`request_name`)
        self.url = url
        self.again = again  # times asked again for a reply whose id was read on another connection
        self.chunks: list[bytes] = []
        self.fresh: bool | None = True
        self.elsewhere = False  # no answer, to be asked again as `again` (`ReplyIds.read`)
        self.ident: str | None = None

    async def __call__(self, event: str, info: dict[str, Any]) -> None:
        if event == self.EVENT and self.response is not None:
            try:
                if self.ids is not None and self.response.status_code != 200:
                    # An error carries no id, and the answer it stands for may still come: a proxy that answered
                    # 503 or 504 forwards the engine's late 200 behind it, the next request's "answer" on a kept
                    # connection. Decided here, not by the caller: httpx closes a response as its last chunk is
                    # read, before the caller could look at its status (rt66c F1).
                    self.reuse = False
                # Read with keep-alive off too: a balancer pooling its upstream connections hands a late copy to
                # a request on a new connection (rt65c F1).
                if self.ids is not None and self.response.status_code == 200:
                    self.ident = await reply_id_of(self.chunks)
                    self.fresh, self.elsewhere = self.ids.read(
                        self.response,
                        self.ident,
                        named=self.named,
                        url=self.url,
                        again=self.again,
                        body=b"".join(self.chunks),
                        asked=self.asked,
                    )
                    self.reuse = self.reuse and bool(self.fresh)
                self.leftover = drop_if_leftover(self.response, reuse=self.reuse)
            except Exception:  # noqa: BLE001 - never in the way of closing the response (the test says it works)
                self.leftover = None


def reply_id(body: bytes) -> str | None:
    """The ``id`` of an OpenAI-shaped reply (vLLM, SGLang, llama.cpp, transformers serve, OpenAI: ``chatcmpl-...``,
    ``cmpl-...``), or None: no JSON object, no id, an empty one (TGI sends ``""``)."""
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError):
        return None
    ident = payload.get("id") if isinstance(payload, dict) else None
    return ident if isinstance(ident, str) and ident else None


#: A body up to this size is parsed for its id on the loop (a verdict is a few hundred bytes); a larger one (only with
#: a raised ``max_reply_bytes``) in a worker thread, as its verdict is.
_INLINE_ID_BYTES = 256 << 10


async def reply_id_of(chunks: list[bytes]) -> str | None:
    """`reply_id` of the body read in ``chunks``."""
    body = b"".join(chunks)
    return reply_id(body) if len(body) <= _INLINE_ID_BYTES else await asyncio.to_thread(reply_id, body)


async def request_digest_of(request: Any) -> bytes | None:
    """The digest of ``request``'s body as sent (`ReplyIds`: one body, one verdict), or None: a body not kept (streamed
    out, a test's transport)."""
    try:
        body = request.content
    except Exception:  # noqa: BLE001 - httpx's RequestNotRead, or no request at all: nothing to compare
        return None
    if not isinstance(body, bytes):
        return None
    return _digest(body) if len(body) <= _INLINE_ID_BYTES else await asyncio.to_thread(_digest, body)


#: Reply ids remembered on each connection (`ReplyIds`), beside the client's `_IDS_KEPT`.
_REPLIES_KEPT = 64
#: Reply ids remembered across the client's connections (`ReplyIds`), each with the connection it was read on.
_IDS_KEPT = 4096
#: Request bodies remembered with the names of the requests that sent them (`ReplyIds.ask`; 130 B a body with one
#: name, 210 B with `_NAMES_KEPT`: 7 MB at most): 8x the client's own verdict cache at its default (``cache_size=4096``),
#: so that a text the cache forgot, asked again, is still known when a caching gateway answers it with the reply it
#: stored (rt66m F1), until 32,768 other texts were asked.
_BODIES_KEPT = 8 * _IDS_KEPT
#: Names remembered for each body (`ReplyIds.ask`), the one a stored reply names moved to the newest as it is read:
#: a gateway's own, and a few of its replicas' (each cache stores the first request it forwarded).
_NAMES_KEPT = 4


#: The request header an engine names its reply by: vLLM answers ``chatcmpl-<X-Request-Id>``, and so does
#: ``qwenguard serve``.
REQUEST_ID_HEADER = "X-Request-Id"


def request_name() -> str:
    """A new request's name: the start of each of its attempts' ``X-Request-Id`` (`ReplyIds`)."""
    return f"qg{secrets.token_hex(12)}"


#: A request's name in a reply's id (`request_name`): a reply naming one that is not its request's answers another.
_NAME = re.compile(r"qg[0-9a-f]{24}")
#: Requests whose re-asked reply again repeated an id read on another connection, before the client takes ids to
#: repeat (`ReplyIds.repeating`): one proxy's double copy proves nothing (rt65i F2).
_REPEATS_PROVING = 3
#: The bytes a name is kept as (`ReplyIds.ask`): its 24 hex digits.
_NAME_BYTES = 12


def _digest(data: bytes) -> bytes:
    """A short fixed-size digest: what is remembered of a reply's id and of its bytes (an id is as long as the engine
    writes it: 250 KB ids held ~1 GiB: rt65i F3)."""
    return hashlib.blake2b(data, digest_size=16).digest()


def _name_bytes(name: str) -> bytes:
    """``name`` (`_NAME`) as kept (`ReplyIds.ask`): 12 bytes, not a 75-byte string."""
    return bytes.fromhex(name[2:])


def _names_in(names: bytes) -> list[bytes]:
    """The names kept in ``names`` (`_NAME_BYTES` each), oldest first."""
    return [names[i : i + _NAME_BYTES] for i in range(0, len(names), _NAME_BYTES)]


def _with_newest(names: bytes, name: bytes) -> bytes:
    """``names`` with ``name`` the newest, the oldest beyond `_NAMES_KEPT` dropped."""
    return b"".join([*(kept for kept in _names_in(names) if kept != name), name][-_NAMES_KEPT:])


class ReplyIds:
    """The reply ids read on each HTTP/1.1 connection of one client (made and used on its loop; the connections'
    parsers are weak keys, so a closed connection leaves nothing behind; ids and bodies are kept as digests).

    A late duplicate (an engine or proxy that writes a reply twice, the second a moment after the first) lands on
    the connection after a later request went out on it, and that request reads it as its own answer: a stale
    "Safe" for another text (rt64e F1); behind a balancer that pools its connections to the engine, on a request
    of another connection (rt65c F1).

    An engine that names each reply by the request's ``X-Request-Id`` (vLLM, ``qwenguard serve``) proves each
    answer: a reply naming its request (an attempt of it) is its answer, wherever it lands, and keeps its
    connection; one naming another request is no answer. A reply that names none is read by the rules below
    whatever its URL did before: a pool of naming and other replicas, a server rolled back, a proxy that sets its
    own header (rt65i F1: a latch on a naming URL refused every honest reply after such a change, 72 requests a
    check). At a URL that named its replies (``echoes``), a reply without a readable id (a copy cut short) is no
    answer.

    Other engines' ids can only show a copy: a reply whose id was read before on its connection is no answer,
    byte for byte or written anew (other whitespace, another ``created``: rt64m F1), however many replies came
    between (rt64l F1; the client remembers the connection of its last `_IDS_KEPT` ids, and each connection its
    last `_REPLIES_KEPT`). One whose id was read on another connection is no answer either: asked again on a new
    connection. Ids that repeat (a gateway writing ``chatcmpl-<unix seconds>``: rt64l F3) are taken as such
    (``repeating``, logged) once `_REPEATS_PROVING` requests asked again got an id read before again (the reply asked
    again is the request's answer in other bytes than the id's first, or asked a third time; one proxy's double copy
    proves nothing for good: rt65i F2); an id read on another connection is an answer then (no id tells a copy
    there; documented, with copies written anew or three times). A copy or ids that repeat (``unique`` false, logged once):
    from then on no connection of the client is kept alive past a reply, as ``keep_alive=False`` does: the
    connections idle in the pool may hold copies of their own, and each is skipped once as it drains (rt64o F1).
    Once the engine has shown ids (``sends_ids``), a reply without one (an error status, a proxy's page) cannot be
    told from a copy either: its connection is not kept alive. An engine that never sends an id keeps its
    connections: nothing tells its copies (``keep_alive=False`` does, `OpenAIGen`).

    One body, one verdict (temperature 0, the same text): a reply naming an earlier request of the same body, or the
    very bytes that answered one, is this request's answer (a response-caching gateway, LiteLLM's cache or nginx's
    ``proxy_cache``, answers a repeated body with its stored reply, its id as first written: with a naming engine
    each repeat was 72 requests and a guard error, with others a proof that ids repeat: rt66c F2). Its connection is
    not kept alive: a copy landing there says this request's own reply may still come on it. A request's body is
    noted as it is sent (`ask`), not as its answer is read: a gateway stores the engine's answer to a first ask the
    client gave up on (rt66m F1). Bodies are remembered (`_BODIES_KEPT`), not requests: each with the names of its
    last requests (`_NAMES_KEPT`), the name a stored reply shows kept as it is read, so a text repeated rarely is
    known after thousands of other requests (rt66m F1: 4,096 other checks, and each repeat was 72 requests and a
    guard error)."""

    def __init__(self) -> None:
        self._read: weakref.WeakKeyDictionary[Any, dict[bytes, None]] = weakref.WeakKeyDictionary()
        # Each id read lately (its digest): the connection it was read on, its reply's bytes' digest, and the digest
        # of the body of the request it answered (None: not known).
        self._on: dict[bytes, tuple[weakref.ref[Any], bytes, bytes | None]] = {}
        # Each request body sent lately (its digest): the names of its last requests (`ask`), `_NAME_BYTES` each.
        self._asked: dict[bytes, bytes] = {}
        self.echoes: set[str] = set()  # the URLs whose replies named their request (`REQUEST_ID_HEADER`)
        self._proofs: set[str] = set()  # requests whose re-ask read an id again (`repeating`)
        self._refused: dict[str, bytes] = {}  # each request's id refused last, asked again for it (`read`)
        self._idless: dict[str, int] = {}  # id-less replies in a row, by naming URL (`echoes`)
        self.sends_ids = False
        self.unique = True
        self.repeating = False

    def ask(self, named: str, asked: bytes | None) -> None:
        """Notes that a request ``named`` (`request_name`) goes out with a body of digest ``asked``
        (`request_digest_of`; None: not known), so that a reply naming it answers any request of that body, however
        this one ends (timed out here, its answer stored by a gateway: rt66m F1)."""
        if asked is None:
            return
        self._asked[asked] = _with_newest(self._asked.pop(asked, b""), _name_bytes(named))
        while len(self._asked) > _BODIES_KEPT:
            del self._asked[next(iter(self._asked))]  # the body asked longest ago

    def _answered(self, names: list[str], asked: bytes | None) -> bool:
        """Whether every request in ``names`` sent the body ``asked``: their reply is its verdict (one body, one
        verdict). The names move to the newest: a gateway's stored reply, read again, keeps them."""
        if asked is None or asked not in self._asked:
            return False
        held = self._asked[asked]
        shown = [_name_bytes(name) for name in names]
        if not set(shown) <= set(_names_in(held)):
            return False
        for name in shown:
            held = _with_newest(held, name)
        del self._asked[asked]
        self._asked[asked] = held
        return True

    def read(
        self,
        response: Any,
        ident: str | None,
        *,
        named: str | None = None,
        url: str = "",
        again: int = 0,
        body: bytes = b"",
        asked: bytes | None = None,
    ) -> tuple[bool | None, bool]:
        """Notes that ``response`` (a 200, read to its end: ``body``) of a request ``named`` (`request_name`, its body's
        digest ``asked``: `ask`) to ``url`` carried the reply id ``ident``. First: True when its
        connection may be reused (a reply naming its request; one not read before; no id from an engine that never
        sends one), None when it may not (no id from an engine that sends them; ids that repeat; the reply to an
        earlier request of the same body), False when the reply is no answer (one naming another request; an id read
        before on its connection, or on another the first time for a request until ids are seen to repeat; at a
        naming URL, no id). Second: whether to ask again (``again``: how many times it was, for such a reply)."""
        names = _NAME.findall(ident) if ident is not None else []
        named_it = named is not None and named in names
        if ident is not None:
            self._idless.pop(url, None)
        if named_it and url not in self.echoes:
            self.echoes.add(url)
            logger.info("qwenguard: the guard server names each reply by its request (X-Request-Id): each is proved")
        if names and not named_it:
            if self._answered(names, asked):
                # The reply to an earlier request of the same body, so its verdict: a response-caching gateway's
                # stored reply names the request it first answered (rt66c F2: 72 requests and a guard error a check).
                return None, False
            return False, False  # another request's reply: a late copy, handed on
        state = h11_state_of(response)
        if ident is None:
            if url in self.echoes:
                # A reply cut short (a copy's) where replies are named: no answer; asked again, each try on a new
                # connection (rt65c F3; rt65q F2: accepted on the second try, two id-less copies were a bomb's
                # "Safe"). `_REPEATS_PROVING` in a row show a server that stopped naming and sends no ids (TGI's
                # empty ids after a rollback, in a pool: rt65s F1, every check 72 requests and a guard error).
                self._idless[url] = self._idless.get(url, 0) + 1
                if self._idless[url] < _REPEATS_PROVING:
                    return False, True
                self.echoes.discard(url)
                logger.warning("qwenguard: the guard server at %s no longer names its replies, and sends no ids", url)
            if state is not None:
                self._read.pop(state, None)
            return (None if self.sends_ids else True), False
        if state is None:
            return True, False  # a connection out of reach (another transport's)
        self.sends_ids = True
        key, shape = _digest(ident.encode("utf-8", "surrogatepass")), _digest(body)
        seen = self._read.setdefault(state, {})
        first = self._on.get(key)
        first_on = None if first is None else first[0]
        if named_it:
            fresh: bool | None = True
        elif first is not None and asked is not None and first[1:] == (shape, asked):
            # The very bytes that answered an earlier request of the same body: its verdict, whatever ids do (so the
            # bytes too, not the id alone: a gateway's repeated id can stand for another text's verdict); never a copy
            # nor a proof that ids repeat (rt66c F2: a caching gateway's repeats turned copy detection off for good).
            fresh = None
        elif key in seen or (first_on is not None and first_on() is state):
            # A copy first, whatever else: a connection kept alive before ids were seen to repeat can still hold one
            # (rt64n F1). Every connection kept alive may hold one too (the same proxy, the same bug), and the
            # request asked again takes an idle one from the pool (rt64o F1): none is kept past a reply from now on,
            # so the idle ones drain, each skipped once.
            self._repeat(ident)
            return False, False
        elif first_on is not None:  # read on another connection
            self._repeat(ident)
            if not self.repeating:
                # A copy a balancer handed on (rt65c F1), or ids that repeat: asked again. Asked again, an id read
                # before once more is this request's answer (a gateway's second: rt64n F2) in other bytes than its
                # first reply, or asked a third time in the same bytes (a gateway's same-second verdicts are the
                # same bytes: refused for good, a burst of one verdict was guard errors and 22x the requests, rt65q
                # F3; a proxy's double copy is spent by then, rt65i F2). Proves ids repeat once several requests
                # show it.
                # The third ask counts only for the id refused on the asks before it (a gateway's one second), not
                # for copies of other replies, one after another (rt65s F2: three earlier replies' copies ahead of
                # the bomb's answer, and the third was its "Safe").
                refused, self._refused[named or ""] = self._refused.get(named or ""), key
                while len(self._refused) > _IDS_KEPT:
                    del self._refused[next(iter(self._refused))]
                same = first is not None and first[1] == shape
                if not again or named is None or (same and (again < 2 or refused != key)):
                    return False, True
                self._refused.pop(named, None)
                self._proofs.add(named)
            if not self.repeating and len(self._proofs) >= _REPEATS_PROVING:
                self.repeating = True
                logger.warning(
                    "qwenguard: the guard server's reply ids repeat (%r read again on %d requests asked again on a "
                    "new connection): they no longer tell a late copy on another connection",
                    ident[:100],
                    len(self._proofs),
                )
            fresh = None
        else:
            fresh = True if self.unique else None  # ids that repeat: no connection is kept past a reply
        seen[key] = None
        if len(seen) > _REPLIES_KEPT:
            del seen[next(iter(seen))]  # the oldest
        self._on[key] = (weakref.ref(state), shape, asked)
        if len(self._on) > _IDS_KEPT:
            del self._on[next(iter(self._on))]
        return fresh, False

    def _repeat(self, ident: str) -> None:
        if self.unique:
            self.unique = False
            logger.warning(
                "qwenguard: the guard server sent a reply whose id %r was read before (a late copy, or ids that "
                "repeat): no connection is kept alive past a reply from now on (as keep_alive=False), so that no "
                "connection can hold a late copy",
                ident[:100],
            )


#: A credential shorter than this is not masked: "1", "on" (a header's switch) or a test's key "wrong" would mask
#: every such digit or word in a server's message; a secret this short is guessed anyway.
_LEAST_SECRET_CHARS = 8
#: The schemes of an ``Authorization``-like value ("Bearer TOKEN") whose token is masked on its own too.
_AUTH_SCHEMES = frozenset({"bearer", "basic", "token", "apikey", "api-key", "key", "digest", "bot"})
#: What a masked credential shows as.
MASK = "***"


class SecretMask:
    """Masks the credentials a client holds wherever they show in a text: the ``api_key``, the value of each
    header it sends (and a value's token after its scheme: ``Bearer TOKEN``), each URL's password, or its user
    alone (a token), and the basic auth httpx makes of them. A server or gateway that echoes a credential in
    its error ("Invalid API key: sk-...") must not put it in decisions, logs or exceptions (rt61c F3)."""

    def __init__(self, api_key: str | None, headers: Mapping[str, str] | None, urls: Iterable[str]) -> None:
        secrets: set[str] = set()
        if api_key:
            secrets.add(api_key)
        for name, value in (headers or {}).items():
            if isinstance(value, str):
                secrets.add(value.strip())
                scheme, space, token = value.strip().partition(" ")
                if space and (scheme.lower() in _AUTH_SCHEMES or str(name).lower().endswith("authorization")):
                    secrets.add(token.strip())  # "Bearer TOKEN": the token alone too
        for url in urls:
            try:
                parts = urllib.parse.urlsplit(url)
            except ValueError:
                continue
            userinfo, at, _ = parts.netloc.rpartition("@")
            if not at:
                continue
            user, colon, password = userinfo.partition(":")
            for raw in (password if colon else user, userinfo):
                secrets.update({raw, urllib.parse.unquote(raw)})
            plain = f"{urllib.parse.unquote(user)}:{urllib.parse.unquote(password)}"
            secrets.add(base64.b64encode(plain.encode()).decode("ascii"))  # basic auth, as httpx sends it
        # As a server may echo them: URL-encoded (a key of base64 "/" and "+" as %2F, %2B) or JSON-escaped (rt61e F3).
        for secret in list(secrets):
            secrets.update({urllib.parse.quote(secret, safe=""), urllib.parse.quote_plus(secret)})
            secrets.add(json.dumps(secret)[1:-1])
        kept = sorted((s for s in secrets if len(s) >= _LEAST_SECRET_CHARS), key=len, reverse=True)
        # One pass, longest first: a key inside a longer header value is masked with it.
        self._pattern = re.compile("|".join(map(re.escape, kept))) if kept else None

    def __bool__(self) -> bool:
        return self._pattern is not None

    def text(self, text: str) -> str:
        """``text`` with each credential masked."""
        return text if self._pattern is None else self._pattern.sub(MASK, text)

    def error(self, exc: BaseException) -> BaseException:
        """``exc`` with the credentials in its message (``args``) and its ``raw`` text masked, in place."""
        if self._pattern is None:
            return exc
        exc.args = tuple(self.text(a) if isinstance(a, str) else a for a in exc.args)
        raw = getattr(exc, "raw", None)
        if isinstance(raw, str):
            try:
                exc.raw = self.text(raw)  # type: ignore[attr-defined]
            except AttributeError:  # a read-only attribute: the message is what decisions show
                pass
        return exc

    def shows_in(self, text: str) -> bool:
        return self._pattern is not None and self._pattern.search(text) is not None


_DEFAULT_PORTS = {"http": 80, "https": 443}


def _origin(url: str) -> tuple[str, str, int | None] | None:
    try:
        parts = urllib.parse.urlsplit(url)
        scheme = {"ws": "http", "wss": "https"}.get(parts.scheme.lower(), parts.scheme.lower())
        return scheme, (parts.hostname or "").lower(), parts.port or _DEFAULT_PORTS.get(scheme)
    except ValueError:
        return None


def same_servers(checks: str | Sequence[str], streams: str | Sequence[str]) -> bool:
    """Whether the stream URLs are the checks' deployment: one of them names a server (scheme, host, port; ``ws``
    as ``http``) among the checks' (a list of replicas that holds the checks' own is replicas of one service).
    Only then may stream sessions carry the checks' credentials (rt61c F5)."""
    origins = {_origin(u) for u in ([checks] if isinstance(checks, str) else checks)} - {None}
    return any(_origin(u) in origins for u in ([streams] if isinstance(streams, str) else streams))
