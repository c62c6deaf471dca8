"""A gateway started with a metrics port serves /metrics there too, open to scrapers without the API's tokens."""

from __future__ import annotations

import socket

import aiohttp
import pytest
from prometheus_client import CollectorRegistry

from gateway.access import issue_token
from gateway.config import GatewayConfig
from gateway.service import GatewayService
from letmesh.launcher import free_port
from mesh.metrics_http import MetricsServer


async def test_the_metrics_port_serves_the_same_registry_without_a_token_and_is_released_on_stop(tmp_path):
    tokens = tmp_path / "tokens.toml"
    issue_token(tokens, "app")
    port = free_port()
    config = GatewayConfig(controller="tcp://127.0.0.1:1", gateway_id="metrics-test", http_port=0,
                           data_bind="tcp://127.0.0.1:*", metrics_port=port, tokens_file=str(tokens),
                           shutdown_timeout_s=2.0)
    service = GatewayService(config)
    await service.start()
    try:
        assert service.metrics is not None and service.metrics.url == f"http://127.0.0.1:{port}/metrics"
        async with aiohttp.ClientSession() as session:
            async with session.get(service.metrics.url) as resp:
                assert resp.status == 200
                text = await resp.text()
            async with session.get(service.http_url + "/metrics") as resp:
                assert resp.status == 401  # the API port keeps its tokens
        assert "# TYPE letmesh_gateway_inflight_requests gauge" in text
        assert "letmesh_gateway_routing_version" in text
        assert "# TYPE letmesh_gateway_event_loop_lag_seconds gauge" in text
    finally:
        await service.stop()
    again = MetricsServer(service.metrics.registry, "127.0.0.1", port)  # the port is free again
    await again.start()
    await again.stop()


async def test_a_taken_metrics_port_fails_the_start_with_the_os_error():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        server = MetricsServer(CollectorRegistry(), "127.0.0.1",
                               taken.getsockname()[1])
        with pytest.raises(OSError):
            await server.start()
        await server.stop()
