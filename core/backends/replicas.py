"""Several replicas of one guard service behind one client: where a request or a stream session goes,
and where it goes next when a replica fails (client-side failover for `OpenAIGen` and `RemoteStream`).

A client takes one base URL (one server, or a load balancer in front of many) or several (replicas it
reaches directly). `Replicas` picks, among those not cooling down after a failure, the one with the
fewest requests or sessions in flight from this client (ties go round the list); a replica that failed
(refused or dropped a connection, answered 5xx or busy, missed its attempt's share of the deadline, or,
for `OpenAIGen`, answered without a verdict while another replica gave one) is avoided for
``cooldown_s`` unless every replica is cooling down. With one URL the choice is trivial and
a retry goes back to the same URL: behind a balancer that is another replica.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from urllib.parse import urlsplit

from .after_fork import fork_safe_lock
from .transport import without_password

__all__ = ["DEFAULT_COOLDOWN_S", "Replicas", "attempt_budget", "base_urls"]

#: How long a replica that failed is passed over (a restarting replica is back, or known gone, by then).
DEFAULT_COOLDOWN_S = 2.0


def base_urls(value: str | Sequence[str], *, schemes: tuple[str, ...] = ("http://", "https://")) -> tuple[str, ...]:
    """One base URL or several, validated, without trailing slashes and duplicates, in the given order."""
    if isinstance(value, str):
        urls: list[object] = [value]
    elif isinstance(value, Sequence) and not isinstance(value, (bytes, bytearray)):
        urls = list(value)
    else:
        raise TypeError(f"base_url must be a URL or a list of URLs, got {type(value).__name__}")
    if not urls:
        raise ValueError("base_url: give at least one URL")
    out: list[str] = []
    for url in urls:
        if not isinstance(url, str) or not url.startswith(schemes):
            raise ValueError(
                f"base_url must be an {' or '.join(s.rstrip(':/') for s in schemes)} URL such as "
                f"'http://127.0.0.1:8000/v1', got {without_password(url) if isinstance(url, str) else url!r}"
            )
        url = _checked(url).rstrip("/")
        if not urlsplit(url).path:
            url += "/v1"  # "http://host:8000": the OpenAI API's root, where streams already looked for it
        if url not in out:
            out.append(url)
    return tuple(out)


def _checked(url: str) -> str:
    """``url``, or a `ValueError` now for what would fail at the first call (a bad port, a broken IPv6
    literal, no host, whitespace), deep inside the HTTP or WebSocket client. Its messages show the URL without
    its password (`without_password`)."""
    shown = without_password(url)
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - parsing the port is the check
    except ValueError as exc:
        raise ValueError(f"base_url {shown!r} is not a valid URL: {exc}") from None
    if not parts.hostname:
        raise ValueError(f"base_url {shown!r} names no host; e.g. 'http://127.0.0.1:8000/v1'")
    if parts.port == 0:  # parses, and no server listens there: it failed at the first check (rt52f F4)
        raise ValueError(f"base_url {shown!r} names port 0; e.g. 'http://127.0.0.1:8000/v1'")
    if "[" in parts.netloc:  # a bracketed host must be an IPv6 address ("[v1.x]" parses, and fails later)
        try:
            ipaddress.IPv6Address(parts.hostname.split("%", 1)[0])
        except ValueError:
            raise ValueError(f"base_url {shown!r} is not a valid URL: {parts.hostname!r} is no IPv6 address") from None
    if parts.query or parts.fragment:  # every path is appended to the base ("?x=1/chat/completions")
        raise ValueError(f"base_url {shown!r} has a query or a fragment; a base URL is scheme, host, port and path")
    if any(c.isspace() or ord(c) < 32 for c in url):
        raise ValueError(f"base_url {shown!r} contains whitespace or a control character")
    # Two mistakes that were accepted and made every check an unexplained 404 (rt50a F10): the comma-separated
    # list `qwenguard eval --remote` takes, and the route a curl example shows instead of the base URL.
    if "," in url or "://" in parts.path:
        raise ValueError(
            f"base_url {shown!r} holds several URLs: pass a list of URLs, e.g. "
            "Guard.remote(['http://a:8000/v1', 'http://b:8000/v1'])"
        )
    path = parts.path.rstrip("/")
    route = next((r for r in _ROUTES if path == r or path.endswith("/" + r)), None)
    if route is not None:
        base = shown[: shown.rstrip("/").rfind("/" + route)] or shown
        raise ValueError(
            f"base_url {shown!r} is the {route} route, not the base URL: pass the URL the routes hang off, e.g. {base!r}"
        )
    return url


#: OpenAI (and qwenguard serve) routes a base URL does not end in; each is appended to it.
_ROUTES = ("chat/completions", "completions", "moderate", "models", "embeddings", "responses")


def attempt_budget(left: float | None, cap: float | None, *, another_follows: bool) -> float | None:
    """Seconds one attempt may take: at most ``cap``, and when another replica can still be tried, at
    most half of the ``left`` time of the call's deadline, so a replica that hangs leaves the other half
    for a replica that answers."""
    budgets = [b for b in (cap, None if left is None else (left / 2 if another_follows else left)) if b is not None]
    return max(0.001, min(budgets)) if budgets else None


class Replicas:
    """The replicas behind one client, in a fixed order; thread-safe (sync and async callers share it)."""

    def __init__(self, urls: Sequence[str], *, cooldown_s: float = DEFAULT_COOLDOWN_S) -> None:
        if not urls:
            raise ValueError("Replicas needs at least one URL")
        self.urls = tuple(urls)
        #: Each URL as messages, logs and reprs show it: without its password (requests use ``urls``).
        self.shown = {u: without_password(u) for u in self.urls}
        self.cooldown_s = cooldown_s
        self._busy = dict.fromkeys(self.urls, 0)
        self._down_until = dict.fromkeys(self.urls, 0.0)
        self._turn = 0
        self._lock = fork_safe_lock(self, "_lock")

    def __len__(self) -> int:
        return len(self.urls)

    def __repr__(self) -> str:
        return f"Replicas({list(self.shown.values())!r})"

    @property
    def several(self) -> bool:
        return len(self.urls) > 1

    def pick(self, exclude: Sequence[str] = ()) -> str:
        """The replica for the next attempt: not in ``exclude`` (the ones this call already tried) while
        others remain; not cooling down while others are up; the fewest in flight; ties in turn."""
        with self._lock:
            now = time.monotonic()
            candidates = [u for u in self.urls if u not in exclude] or list(self.urls)
            up = [u for u in candidates if self._down_until[u] <= now]
            if not up:  # all cooling down: the one that failed longest ago
                return min(candidates, key=lambda u: self._down_until[u])
            self._turn += 1
            start = self._turn % len(up)
            return min(up[start:] + up[:start], key=lambda u: self._busy[u])

    def untried(self, tried: Sequence[str]) -> bool:
        """Whether a replica not in ``tried`` remains."""
        return any(u not in tried for u in self.urls)

    @contextmanager
    def using(self, url: str) -> Iterator[None]:
        """Count a request in flight on ``url`` for as long as the block runs."""
        self.acquire(url)
        try:
            yield
        finally:
            self.release(url)

    def acquire(self, url: str) -> None:
        with self._lock:
            self._busy[url] += 1

    def release(self, url: str) -> None:
        with self._lock:
            self._busy[url] = max(0, self._busy[url] - 1)

    def failed(self, url: str) -> None:
        """``url`` failed: pass it over for ``cooldown_s``."""
        with self._lock:
            self._down_until[url] = time.monotonic() + self.cooldown_s

    def succeeded(self, url: str) -> None:
        with self._lock:
            self._down_until[url] = 0.0
