"""Bearer tokens, scopes and per-client rates in front of the HTTP API, and TLS."""

from __future__ import annotations

import asyncio
import hashlib
import ssl
import subprocess
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import given
from hypothesis import strategies as st

from gateway.access import (
    CLIENT_KEY,
    AccessError,
    AccessPolicy,
    Client,
    TokenBucket,
    access_middleware,
    issue_token,
    load_tokens,
)
from gateway.oip_response import error_body
from gateway.service import tls_context


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def test_a_bucket_lets_a_burst_through_then_says_when_to_come_back() -> None:
    bucket = TokenBucket(rate_per_s=2.0, burst=3, now=0.0)
    assert [bucket.take(0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take(0.0) == pytest.approx(0.5)
    assert bucket.take(0.25) == pytest.approx(0.25)
    assert bucket.take(0.5) == 0.0
    assert bucket.take(100.0) == 0.0  # refilled, but never past the burst
    assert [bucket.take(100.0) for _ in range(3)][-1] == pytest.approx(0.5)


@given(st.lists(st.floats(min_value=0.0, max_value=5.0), min_size=1, max_size=60))
def test_a_bucket_never_admits_more_than_burst_plus_rate_times_elapsed(gaps: list[float]) -> None:
    bucket = TokenBucket(rate_per_s=4.0, burst=2, now=0.0)
    now, admitted = 0.0, 0
    for gap in gaps:
        now += gap
        admitted += bucket.take(now) == 0.0
    assert admitted <= 2 + 4.0 * now + 1e-9


def make_app(policy: AccessPolicy) -> web.Application:
    async def who(request: web.Request) -> web.Response:
        return web.json_response({"client": request.get(CLIENT_KEY, "")})

    app = web.Application(middlewares=[access_middleware(policy, error_body)])
    app.router.add_get("/v2/health/ready", who)
    app.router.add_get("/dashboard", who)
    app.router.add_get("/dashboard/data", who)
    app.router.add_post("/v2/models/m/infer", who)
    app.router.add_post("/v1/feedback", who)
    app.router.add_post("/v2/repository/index", who)
    return app


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def client(clock: FakeClock):
    policy = AccessPolicy([
        Client("shop", digest("shop-token"), frozenset({"inference", "feedback"}), rate_per_s=1.0, burst=2),
        Client("ops", digest("ops-token"), frozenset({"management"})),
    ], clock)
    async with TestClient(TestServer(make_app(policy))) as c:
        yield c


async def test_a_request_without_a_valid_token_gets_401_with_the_scheme_to_use(client) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong-token"}, {"Authorization": "Basic c2hvcC10b2tlbg=="},
                    {"Authorization": "Bearer " + "x" * len("shop-token")}):
        resp = await client.post("/v2/models/m/infer", headers=headers)
        assert resp.status == 401
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")
        assert "error" in await resp.json()


async def test_a_token_of_bytes_that_are_not_utf8_gets_401_not_500(client) -> None:
    reader, writer = await asyncio.open_connection(client.host, client.port)
    try:
        writer.write(b"POST /v2/models/m/infer HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \xff\xfe\r\n"
                     b"Content-Length: 0\r\n\r\n")
        response = await asyncio.wait_for(reader.read(65536), 10)
    finally:
        writer.close()
    assert response.startswith(b"HTTP/1.1 401"), response[:200]


async def test_a_valid_token_reaches_the_handler_which_knows_the_clients_name(client) -> None:
    resp = await client.post("/v2/models/m/infer", headers={"Authorization": "Bearer shop-token"})
    assert resp.status == 200 and (await resp.json())["client"] == "shop"


async def test_health_probes_stay_open(client) -> None:
    resp = await client.get("/v2/health/ready")
    assert resp.status == 200 and (await resp.json())["client"] == ""


async def test_the_dashboard_page_is_open_but_its_data_needs_an_inference_token(client) -> None:
    assert (await client.get("/dashboard")).status == 200
    assert (await client.get("/dashboard/data")).status == 401
    assert (await client.get("/dashboard/data", headers={"Authorization": "Bearer ops-token"})).status == 403
    assert (await client.get("/dashboard/data", headers={"Authorization": "Bearer shop-token"})).status == 200


async def test_a_token_is_limited_to_its_scopes(client) -> None:
    resp = await client.post("/v2/repository/index", headers={"Authorization": "Bearer shop-token"})
    assert resp.status == 403
    resp = await client.post("/v2/repository/index", headers={"Authorization": "Bearer ops-token"})
    assert resp.status == 200
    resp = await client.post("/v2/models/m/infer", headers={"Authorization": "Bearer ops-token"})
    assert resp.status == 403


async def test_over_its_rate_a_client_gets_429_with_retry_after_and_others_are_unaffected(client, clock) -> None:
    auth = {"Authorization": "Bearer shop-token"}
    assert [(await client.post("/v1/feedback", headers=auth)).status for _ in range(2)] == [200, 200]
    resp = await client.post("/v1/feedback", headers=auth)
    assert resp.status == 429 and resp.headers["Retry-After"] == "1"
    assert (await client.post("/v2/repository/index", headers={"Authorization": "Bearer ops-token"})).status == 200
    clock.now += 1.0
    assert (await client.post("/v1/feedback", headers=auth)).status == 200


def test_a_tokens_file_stores_digests_only_and_loads_back(tmp_path: Path) -> None:
    path = tmp_path / "tokens.toml"
    token = issue_token(path, "shop", ("inference",), rate_per_s=5.0, burst=10)
    issue_token(path, "ops", ("management",))
    assert token not in path.read_text()
    policy = load_tokens(path)
    assert policy.authenticate(f"Bearer {token}").name == "shop"
    assert policy.decide("POST", "/v2/repository/index", f"Bearer {token}").status == 403
    with pytest.raises(AccessError, match="already has"):
        issue_token(path, "shop")
    with pytest.raises(AccessError, match="unknown scopes"):
        issue_token(path, "x", ("admin",))


@pytest.mark.parametrize("rate, burst, problem", [
    (5.0, 0.5, "--burst must be 0"), (-1.0, 0.0, "--rate must be a finite number >= 0"),
    (float("nan"), 0.0, "--rate must be"), (float("inf"), 0.0, "--rate must be"),
    (0.0, 5.0, "--burst applies only with a --rate"),
])
def test_a_limit_the_gateway_would_refuse_is_refused_when_the_token_is_issued(tmp_path: Path, rate, burst,
                                                                               problem) -> None:
    path = tmp_path / "tokens.toml"
    issue_token(path, "first", rate_per_s=2.0, burst=3)
    with pytest.raises(AccessError, match=problem):
        issue_token(path, "bad", rate_per_s=rate, burst=burst)
    assert [c.name for c in load_tokens(path).clients] == ["first"]  # the file still loads, unchanged
    issue_token(path, "second")  # and takes the next client


@pytest.mark.parametrize("text", ["", "[[client]]\nname = 'a'\n", "[[client]]\nname='a'\ntoken_sha256='abc'\n",
                                  "[[client]]\nname='a'\ntoken_sha256='" + "0" * 64 + "'\nscopes=['root']\n", "x ="])
def test_a_bad_tokens_file_is_refused_with_its_reason(tmp_path: Path, text: str) -> None:
    path = tmp_path / "tokens.toml"
    path.write_text(text)
    with pytest.raises(AccessError):
        load_tokens(path)


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=60)
    return cert, key


async def test_with_a_certificate_the_api_is_served_over_tls(certificate) -> None:
    cert, key = certificate
    policy = AccessPolicy([Client("shop", digest("shop-token"), frozenset({"inference"}))])
    runner = web.AppRunner(make_app(policy))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls_context(str(cert), str(key)))
    await site.start()
    port = runner.addresses[0][1]
    trust = ssl.create_default_context(cafile=str(cert))
    try:
        async with aiohttp.ClientSession() as session:
            async with session.post(f"https://127.0.0.1:{port}/v2/models/m/infer", ssl=trust,
                                    headers={"Authorization": "Bearer shop-token"}) as resp:
                assert resp.status == 200
            with pytest.raises(aiohttp.ClientError):
                async with session.post(f"http://127.0.0.1:{port}/v2/models/m/infer") as resp:
                    await resp.read()
    finally:
        await runner.cleanup()
    with pytest.raises(AccessError):
        tls_context(str(cert), "")
