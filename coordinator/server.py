"""One coordinator: its state store, the registry, the placements, the scheduler,
discovery, the gRPC server (Inference, plus the standard health service and server
reflection) and, when an HTTP port is given, the OpenAI-compatible HTTP API
(``http_api``) on the same event loop, built and connected here, started and
stopped together. Every gRPC call proves the cluster key or an API key
(``auth.grpc_server``), every HTTP request an API key; its calls to the workers sign
with the cluster key."""

from __future__ import annotations

import logging
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from ..auth.callers import ApiKeys
from ..auth.grpc_server import Authenticated
from ..auth.key_file import ClusterKey
from ..serving import ParsedRequests, address
from ..v1 import inference_pb2, inference_pb2_grpc
from .api import Inference
from .discovery import MdnsDiscovery, add_peers
from .placement_lifecycle import PlacementLifecycle
from .registry import HEARTBEAT_S, LOST_AFTER_S, Registry
from .scheduler import DEFAULT_MAX_QUEUE, DEFAULT_MAX_TOKENS, Scheduler
from .state_store import StateStore

log = logging.getLogger(__name__)

SERVICE = inference_pb2.DESCRIPTOR.services_by_name["Inference"].full_name
DEFAULT_PORT = 50151


class Coordinator:
    def __init__(self, host: str, port: int, *, key: ClusterKey, peers: list[str], mdns: bool,
                 heartbeat_s: float = HEARTBEAT_S, lost_after_s: float = LOST_AFTER_S,
                 http_port: int | None = None,
                 http_host: str | None = None, max_queue: int = DEFAULT_MAX_QUEUE,
                 default_max_tokens: int = DEFAULT_MAX_TOKENS,
                 default_model: str = "", default_draft_model: str = "",
                 state_dir: Path | None = None, api_keys: ApiKeys | None = None):
        """``http_port`` None serves no HTTP API (0 picks a free port); ``http_host``
        defaults to ``host``. ``default_model`` (and its ``default_draft_model``) is what
        an HTTP request that names no model gets (``exo-spec serve``). ``state_dir``
        keeps the coordinator's id, jobs and placements across restarts (None: nothing
        outlives the process); ``state_store.StateDirError`` when it cannot be used.
        ``key``: the cluster key (its holders are the admin, and the workers take
        only it); ``api_keys``: the keys of the other callers, over gRPC and HTTP."""
        self.host = host
        self.port = port
        self.peers = list(peers)
        self.store = StateStore(state_dir)
        self.registry = Registry(interval=heartbeat_s, lost_after=lost_after_s,
                                 coordinator_id=self.store.coordinator_id, key=key)
        self.placements = PlacementLifecycle(self.registry, self.store)
        self.scheduler = Scheduler(self.registry, self.placements, self.store,
                                   max_queue=max_queue, default_max_tokens=default_max_tokens)
        self.http = None
        if http_port is not None:
            from .http_api import HttpApi  # Starlette and uvicorn only when asked for

            self.http = HttpApi(self.registry, self.placements, self.scheduler,
                                http_host or host, http_port, default_model=default_model,
                                default_draft_model=default_draft_model,
                                api_keys=api_keys or ApiKeys())
        # The placements hold models on the nodes: they follow what becomes of them.
        self.registry.on_ready = self.placements.node_ready
        self.registry.on_lost = self.placements.node_lost
        self.registry.on_info = self.placements.node_info
        self.discovery = MdnsDiscovery(self.registry, host) if mdns else None
        self.server = grpc.aio.server(interceptors=[Authenticated(key, api_keys),
                                                    ParsedRequests()])
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
        self.placements.adopt(self.store.placements())  # before the first heartbeat
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
        self.store.close()
