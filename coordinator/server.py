"""One coordinator: the registry, the placements, the scheduler, discovery, the
gRPC server (Inference, plus the standard health service and server reflection)
and, when an HTTP port is given, the OpenAI-compatible HTTP API (``http_api``) on
the same event loop, built and connected here, started and stopped together."""

from __future__ import annotations

import logging

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from ..serving import ParsedRequests, address
from ..v1 import inference_pb2, inference_pb2_grpc
from .api import Inference
from .discovery import MdnsDiscovery, add_peers
from .placement_lifecycle import PlacementLifecycle
from .registry import Registry
from .scheduler import DEFAULT_MAX_QUEUE, DEFAULT_MAX_TOKENS, Scheduler

log = logging.getLogger(__name__)

SERVICE = inference_pb2.DESCRIPTOR.services_by_name["Inference"].full_name
DEFAULT_PORT = 50151


class Coordinator:
    def __init__(self, host: str, port: int, *, peers: list[str], mdns: bool,
                 heartbeat_s: float, lost_after: int, http_port: int | None = None,
                 http_host: str | None = None, max_queue: int = DEFAULT_MAX_QUEUE,
                 default_max_tokens: int = DEFAULT_MAX_TOKENS,
                 default_model: str = "", default_draft_model: str = ""):
        """``http_port`` None serves no HTTP API (0 picks a free port); ``http_host``
        defaults to ``host``. ``default_model`` (and its ``default_draft_model``) is what
        an HTTP request that names no model gets (``exo-spec serve``)."""
        self.host = host
        self.port = port
        self.peers = list(peers)
        self.registry = Registry(interval=heartbeat_s, deadline=max(2 * heartbeat_s, 1.0),
                                 misses=lost_after)
        self.placements = PlacementLifecycle(self.registry)
        self.scheduler = Scheduler(self.registry, self.placements, max_queue=max_queue,
                                   default_max_tokens=default_max_tokens)
        self.http = None
        if http_port is not None:
            from .http_api import HttpApi  # Starlette and uvicorn only when asked for

            self.http = HttpApi(self.registry, self.placements, self.scheduler,
                                http_host or host, http_port, default_model=default_model,
                                default_draft_model=default_draft_model)
        # The placements hold models on the nodes: they follow what becomes of them.
        self.registry.on_ready = self.placements.node_ready
        self.registry.on_lost = self.placements.node_lost
        self.registry.on_info = self.placements.node_info
        self.discovery = MdnsDiscovery(self.registry, host) if mdns else None
        self.server = grpc.aio.server(interceptors=[ParsedRequests()])
        self.health = health.aio.HealthServicer()

    async def start(self) -> int:
        """Bind and serve; the gRPC port it serves on (``port`` 0 picks a free one).
        RuntimeError when an address cannot be bound."""
        if self.http:
            self.http.bind()  # first: nothing has started yet if its address is taken
        inference_pb2_grpc.add_InferenceServicer_to_server(
            Inference(self.registry, self.placements, self.scheduler), self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (SERVICE, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
             reflection.SERVICE_NAME), self.server)
        self.port = self.server.add_insecure_port(address(self.host, self.port))
        await self.server.start()
        for service in ("", SERVICE):
            await self.health.set(service, health_pb2.HealthCheckResponse.SERVING)
        add_peers(self.registry, self.peers)
        if self.discovery:
            await self.discovery.start()
        if self.http:
            await self.http.start()
        return self.port

    async def stop(self) -> None:
        await self.health.enter_graceful_shutdown()
        if self.http:
            self.http.stop_accepting()
        if self.discovery:
            await self.discovery.stop()
        await self.scheduler.close()  # every job ends: its HTTP response or stream too
        if self.http:
            await self.http.stop()
        await self.placements.close()
        await self.server.stop(grace=1.0)
        await self.registry.close()
