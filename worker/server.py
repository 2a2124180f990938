"""The worker process (``exo-spec worker``): serve this machine to a coordinator.

Serves WorkerControl (plus gRPC health and reflection) on ``--host`` to callers
that prove the cluster key (``auth.grpc_server``; health answers anyone), advertises
itself by mDNS on that interface unless ``--no-mdns``, logs one line per event on
stderr, and on SIGINT/SIGTERM stops advertising and releases its placements.
"""

from __future__ import annotations

import logging
import sys

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from ..auth.grpc_server import Authenticated
from ..auth.key_file import ClusterKey
from ..serving import ParsedRequests, address, until_stopped
from ..v1 import worker_pb2, worker_pb2_grpc
from .advertise import Advertiser
from .batching import DEFAULT_BATCHING, Batching
from .control import WorkerControl
from .lease import DEFAULT_TIMEOUT_S as DEFAULT_LEASE_TIMEOUT_S
from .model_sources import ModelSources
from .node import Node
from .placements import Placements, remove_dead_workers_dirs

SERVICE = worker_pb2.DESCRIPTOR.services_by_name["WorkerControl"].full_name


def worker_server(node: Node, key: ClusterKey, group_timeout_s: float,
                  models: ModelSources, prefix_cache_bytes: int | None = None,
                  lease_timeout_s: float = DEFAULT_LEASE_TIMEOUT_S,
                  batching: Batching = DEFAULT_BATCHING
                  ) -> tuple[grpc.aio.Server, WorkerControl, Placements]:
    """A gRPC server with this node's WorkerControl, not yet bound or started (``serve``
    binds it, and so does ``exo-spec serve`` for its built-in worker). First removes
    what killed workers left in the temporary directory."""
    for path in remove_dead_workers_dirs():
        logging.getLogger(__name__).info("removed %s, left by a worker that is gone", path)
    server = grpc.aio.server(interceptors=[Authenticated(key), ParsedRequests()])
    placements = Placements()
    control = WorkerControl(node, placements, group_timeout_s, models, prefix_cache_bytes,
                            lease_timeout_s, batching)
    worker_pb2_grpc.add_WorkerControlServicer_to_server(control, server)
    return server, control, placements


async def serve(node: Node, key: ClusterKey, port: int, *, mdns: bool,
                group_timeout_s: float, models: ModelSources, prefix_cache_bytes: int | None = None,
                lease_timeout_s: float = DEFAULT_LEASE_TIMEOUT_S,
                batching: Batching = DEFAULT_BATCHING) -> int:
    server, control, placements = worker_server(node, key, group_timeout_s, models,
                                                prefix_cache_bytes, lease_timeout_s, batching)
    health_status = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_status, server)
    reflection.enable_server_reflection(
        (SERVICE, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
         reflection.SERVICE_NAME), server)
    try:
        control.port = server.add_insecure_port(address(node.host, port))
    except RuntimeError as e:
        print(f"exo-spec worker: error: cannot serve on {address(node.host, port)}: {e}",
              file=sys.stderr)
        return 2
    await server.start()
    for service in ("", SERVICE):
        await health_status.set(service, health_pb2.HealthCheckResponse.SERVING)
    advertiser = Advertiser(node, control.port) if mdns else None
    if advertiser:
        try:
            await advertiser.start()
        except Exception as e:  # a taken name, no multicast on the interface, ...
            print(f"exo-spec worker: error: cannot advertise {node.node_id} by mDNS: "
                  f"{type(e).__name__}: {e}", file=sys.stderr)
            await server.stop(None)
            return 2
    print(f"exo-spec worker {node.node_id} serving on {address(node.host, control.port)} "
          f"(memory {node.memory_bytes / 2**30:.1f} GiB, backend {node.backend})",
          file=sys.stderr, flush=True)
    await until_stopped()
    logging.getLogger(__name__).info("stopping")
    if advertiser:
        await advertiser.stop()
    await health_status.enter_graceful_shutdown()
    await placements.release_all()
    await server.stop(grace=1.0)
    return 0
