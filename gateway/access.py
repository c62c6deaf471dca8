"""Who may call the gateway's HTTP API: bearer tokens with scopes, and a rate per token.

A tokens file (TOML) lists clients; only the sha256 of each token is stored::

    [[client]]
    name = "shop-frontend"
    token_sha256 = "9f86d08..."          # letmesh tokens add prints the token once
    scopes = ["inference", "feedback"]   # inference, feedback, management
    rate_per_s = 50.0                    # optional: requests per second, with
    burst = 100                          # this many at once (default: one second's worth)

Health probes stay open. Without a tokens file the API is open, as before. The decision is a
pure object (``AccessPolicy.decide``) with an injected clock; the aiohttp middleware only
turns its answer into 401 / 403 / 429 and records the client's name on the request.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import secrets
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

SCOPES = ("inference", "feedback", "management")
# The dashboard's page holds no data (its JSON, /dashboard/data, needs an inference token), so a
# browser can open it and hand the token to the page's requests.
OPEN_PATHS = frozenset({"/v2/health/live", "/v2/health/ready", "/dashboard"})
# The authenticated client's name, for logs and metrics: request[CLIENT_KEY] (absent on an open API).
CLIENT_KEY = web.RequestKey("letmesh_client", str)


class AccessError(Exception):
    """A tokens file that cannot be used."""


class TokenBucket:
    """``rate_per_s`` tokens a second up to ``burst``; a request takes one or is told when to come back.

    Pure: time comes from the caller. Not thread-safe (one event loop).
    """

    def __init__(self, rate_per_s: float, burst: float, now: float) -> None:
        if rate_per_s <= 0 or burst < 1:
            raise ValueError("a rate needs rate_per_s > 0 and burst >= 1")
        self.rate_per_s = rate_per_s
        self.burst = float(burst)
        self._tokens = float(burst)
        self._at = now

    def take(self, now: float) -> float:
        """0.0 when the request may go; else the seconds until one token is back."""
        self._tokens = min(self.burst, self._tokens + max(0.0, now - self._at) * self.rate_per_s)
        self._at = max(self._at, now)
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return 0.0
        return (1.0 - self._tokens) / self.rate_per_s


@dataclass(frozen=True, slots=True)
class Client:
    name: str
    token_sha256: str
    scopes: frozenset[str]
    rate_per_s: float = 0.0  # 0: unlimited
    burst: float = 0.0


@dataclass(frozen=True, slots=True)
class Decision:
    status: int  # 200 go on, 401 no or bad token, 403 token lacks the scope, 429 over its rate
    client: str = ""
    retry_after_s: float = 0.0
    message: str = ""


def scope_of(method: str, path: str) -> str | None:
    """The scope a request needs; None for the open health probes."""
    if path in OPEN_PATHS:
        return None
    if path.startswith("/v1/feedback"):
        return "feedback"
    if path.startswith("/v2/repository"):
        return "management"
    return "inference"  # inference and model metadata; unknown paths too (a 404 only to a client)


class AccessPolicy:
    """Decides each request from its Authorization header and the time."""

    def __init__(self, clients: list[Client], clock: Callable[[], float] = time.monotonic) -> None:
        self.clients = list(clients)
        self._clock = clock
        now = clock()
        self._buckets = {c.name: TokenBucket(c.rate_per_s, c.burst or max(1.0, c.rate_per_s), now)
                         for c in self.clients if c.rate_per_s > 0}

    def authenticate(self, authorization: str) -> Client | None:
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        # The bytes as sent: a header with bytes that are not UTF-8 is a wrong token, not an error.
        digest = hashlib.sha256(token.strip().encode("utf-8", "surrogateescape")).hexdigest()
        found = None
        for client in self.clients:  # every digest compared, in constant time each
            if hmac.compare_digest(client.token_sha256, digest):
                found = client
        return found

    def decide(self, method: str, path: str, authorization: str) -> Decision:
        scope = scope_of(method, path)
        if scope is None:
            return Decision(200)
        client = self.authenticate(authorization)
        if client is None:
            return Decision(401, message="a valid bearer token is required (Authorization: Bearer <token>)")
        if scope not in client.scopes:
            return Decision(403, client.name, message=f"token {client.name!r} lacks the {scope!r} scope")
        bucket = self._buckets.get(client.name)
        if bucket is not None:
            wait = bucket.take(self._clock())
            if wait > 0:
                return Decision(429, client.name, retry_after_s=wait,
                                message=f"{client.name!r} is over its rate of {bucket.rate_per_s:g} requests/s")
        return Decision(200, client.name)


def access_middleware(policy: AccessPolicy, error_body: Callable[[str], bytes]):
    """The aiohttp middleware for ``policy``; ``error_body`` shapes the JSON error."""

    @web.middleware
    async def check_access(request: web.Request, handler) -> web.StreamResponse:
        decision = policy.decide(request.method, request.path, request.headers.get("Authorization", ""))
        if decision.status == 200:
            if decision.client:
                request[CLIENT_KEY] = decision.client
            return await handler(request)
        headers = {}
        if decision.status == 401:
            headers["WWW-Authenticate"] = 'Bearer realm="letmesh"'
        if decision.status == 429:
            headers["Retry-After"] = str(max(1, math.ceil(decision.retry_after_s)))
        return web.Response(status=decision.status, body=error_body(decision.message),
                            content_type="application/json", headers=headers)

    return check_access


def load_tokens(path: str | Path, clock: Callable[[], float] = time.monotonic) -> AccessPolicy:
    path = Path(path)
    try:
        document = tomllib.loads(path.read_text())
    except OSError as exc:
        raise AccessError(f"cannot read tokens file {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise AccessError(f"tokens file {path} is not valid TOML: {exc}") from None
    clients = []
    for i, entry in enumerate(document.get("client", [])):
        where = f"{path} client #{i + 1}"
        try:
            name, digest = str(entry["name"]), str(entry["token_sha256"]).lower()
            scopes = frozenset(entry.get("scopes", SCOPES))
            rate, burst = float(entry.get("rate_per_s", 0.0)), float(entry.get("burst", 0.0))
        except (KeyError, TypeError, ValueError) as exc:
            raise AccessError(f"{where}: needs name and token_sha256 ({exc})") from None
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise AccessError(f"{where}: token_sha256 must be 64 hex digits")
        if not scopes <= set(SCOPES):
            raise AccessError(f"{where}: unknown scopes {sorted(scopes - set(SCOPES))}; known: {', '.join(SCOPES)}")
        if problem := limits_problem(rate, burst):
            raise AccessError(f"{where}: {problem}")
        clients.append(Client(name, digest, scopes, rate, burst))
    if not clients:
        raise AccessError(f"{path} lists no [[client]]: nobody could call the API")
    if len({c.name for c in clients}) != len(clients):
        raise AccessError(f"{path}: client names must be unique")
    return AccessPolicy(clients, clock)


def limits_problem(rate_per_s: float, burst: float) -> str:
    """Why a client's rate limit is unusable ("" when it is fine): the one rule of the tokens file
    and of ``letmesh tokens add``, so what one writes the other reads."""
    if not (math.isfinite(rate_per_s) and rate_per_s >= 0):
        return f"rate_per_s must be a finite number >= 0 (0: unlimited), got {rate_per_s!r}"
    if not (math.isfinite(burst) and (burst == 0 or burst >= 1)):
        return f"burst must be 0 (one second's worth) or a finite number >= 1, got {burst!r}"
    if burst and not rate_per_s:
        return "burst applies only with a rate_per_s (without one, requests are not limited)"
    return ""


def issue_token(path: str | Path, name: str, scopes: tuple[str, ...] = ("inference", "feedback"),
                rate_per_s: float = 0.0, burst: float = 0.0) -> str:
    """Append a client to the tokens file (created if missing) and return its token, which is stored nowhere."""
    path = Path(path)
    if not name or any(c in name for c in '"\\\n'):
        raise AccessError(f"bad client name {name!r}")
    if not set(scopes) <= set(SCOPES):
        raise AccessError(f"unknown scopes {sorted(set(scopes) - set(SCOPES))}; known: {', '.join(SCOPES)}")
    if problem := limits_problem(rate_per_s, burst):
        raise AccessError(problem.replace("rate_per_s", "--rate").replace("burst", "--burst"))
    if path.exists() and path.read_text().strip() and any(c.name == name for c in load_tokens(path).clients):
        raise AccessError(f"{path} already has a client named {name!r}")
    token = secrets.token_urlsafe(32)
    lines = ["", "[[client]]", f'name = "{name}"', f'token_sha256 = "{hashlib.sha256(token.encode()).hexdigest()}"',
             "scopes = [" + ", ".join(f'"{s}"' for s in scopes) + "]"]
    if rate_per_s > 0:
        lines.append(f"rate_per_s = {float(rate_per_s)}")
        if burst:
            lines.append(f"burst = {float(burst)}")
    with path.open("a") as f:
        f.write("\n".join(lines) + "\n")
    path.chmod(0o600)
    return token
