"""One check on every request a provider's SDK client sends, before anything is sent.

The SDKs do not only call our base URL: Anthropic's batch results are fetched from the absolute
``results_url`` that the server returns, and any answer may redirect. Each of those requests
carries the key. So the httpx client we give each SDK runs ``EgressGuard`` as a request hook.
httpx runs request hooks for the first request and for every redirect hop, before the transport
(or a proxy from the environment) opens a connection, and the SDKs send everything through that
one client: no provider path can go around it. The guard

- refuses a request whose origin (scheme, host, port) is not the credential's base URL's: the
  key only ever goes to the host its owner typed it for (a redirect within that origin is
  followed; one anywhere else is refused);
- checks the base URL against worker.ssrf's rules when the provider is built and again before
  a request once the last check is ``RECHECK_AFTER_S`` old, so a name that starts resolving to
  a metadata address (or, without the owner's permission, a private one) is refused mid-run.

A refused request raises TeacherEgressRefusedError (fatal: the run stops); nothing is sent.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx2

from worker.ssrf import Resolver, UnsafeURLError, check_base_url
from worker.teachers.base import (
    ProviderConfig,
    TeacherConfigError,
    TeacherConnectionError,
    TeacherEgressRefusedError,
)

RECHECK_AFTER_S = 60.0
_DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True)
class Origin:
    scheme: str
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


def origin_of(url: httpx2.URL | str) -> Origin:
    """Scheme, host and port (the scheme's default when the URL names none)."""
    parsed = url if isinstance(url, httpx2.URL) else httpx2.URL(url)
    scheme = parsed.scheme.lower()
    port = parsed.port or _DEFAULT_PORTS.get(scheme, 0)
    return Origin(scheme, parsed.host.lower().rstrip("."), port)


class EgressGuard:
    """The request hook for one provider client; ``base_url`` is where its key may go."""

    def __init__(
        self,
        config: ProviderConfig,
        base_url: str,
        *,
        check_now: bool,
        resolver: Resolver | None = None,
        recheck_after_s: float = RECHECK_AFTER_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``check_now`` runs the SSRF check at once (custom base URLs: a refused one fails the
        build with TeacherConfigError); otherwise the first request runs it (the providers'
        own hosts, so that building a client never needs DNS)."""
        self.config = config
        self.base_url = base_url
        self._resolver = resolver
        self._recheck_after_s = recheck_after_s
        self._clock = clock
        self._checked_at: float | None = None
        if check_now:
            try:
                self._check()
            except UnsafeURLError as exc:
                raise TeacherConfigError(f"{config.label}: {exc}") from exc
        try:
            self.origin = origin_of(base_url)
        except (httpx2.InvalidURL, ValueError) as exc:
            raise TeacherConfigError(f"{config.label}: base URL {base_url!r}: {exc}") from exc

    def allows(self, url: str) -> bool:
        """Whether ``url`` is on the credential's own origin."""
        try:
            return origin_of(url) == self.origin
        except (httpx2.InvalidURL, ValueError):
            return False

    def http_client_options(self, timeout: Any) -> dict[str, Any]:
        """Keyword arguments for the SDK's ``DefaultAsyncHttpxClient``: its connection limits and
        socket options stay, redirects within the origin are followed, every hop is checked."""
        return {"timeout": timeout, "follow_redirects": True, "event_hooks": {"request": [self]}}

    async def __call__(self, request: httpx2.Request) -> None:
        origin = origin_of(request.url)
        if origin != self.origin:
            shown = f"{origin}{request.url.path}"  # no query: it may hold a signed token
            raise TeacherEgressRefusedError(
                f"{self.config.label}: refused to send a request to {shown}: this credential's "
                f"key is only sent to {self.origin}, the host of its base URL (the provider "
                "redirected there or named that URL in its answer); nothing was sent",
                refused_url=shown,
                allowed_origin=str(self.origin),
            )
        if self._checked_at is None or self._clock() - self._checked_at >= self._recheck_after_s:
            await self._recheck(request)

    def _check(self) -> None:
        check_base_url(
            self.base_url, allow_private=self.config.allow_private_network, resolver=self._resolver
        )
        self._checked_at = self._clock()

    async def _recheck(self, request: httpx2.Request) -> None:
        try:
            # Resolving blocks; keep it off the event loop that runs the other calls.
            await asyncio.get_running_loop().run_in_executor(None, self._check)
        except UnsafeURLError as exc:
            if exc.code == "unresolvable":  # DNS trouble passes; retried like a refused connect
                raise TeacherConnectionError(
                    f"could not connect to {self.config.label}: {exc}"
                ) from exc
            raise TeacherEgressRefusedError(
                f"{self.config.label}: refused to send a request: {exc}; nothing was sent",
                refused_url=f"{self.origin}{request.url.path}",
                allowed_origin=str(self.origin),
            ) from exc
