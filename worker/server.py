"""``exo-spec worker``: serve this machine to a coordinator.

Serves WorkerControl (plus gRPC health and reflection) on ``--host``, advertises
itself by mDNS on that interface unless ``--no-mdns``, logs one line per event on
stderr, and on SIGINT/SIGTERM stops advertising and releases its placements.
"""

from __future__ import annotations

import asyncio
import logging
import sys

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from ..serving import address, until_stopped
from ..v1 import worker_pb2, worker_pb2_grpc
from .advertise import Advertiser
from .control import WorkerControl
from .node import Node, this_node
from .placements import Placements
from .runner.watchdog import DEFAULT_TIMEOUT_S

SERVICE = worker_pb2.DESCRIPTOR.services_by_name["WorkerControl"].full_name


def add_parser(sub) -> None:
    p = sub.add_parser("worker", help="serve this machine to a coordinator")
    p.add_argument("--host", help="address to bind and advertise (default: the primary one)")
    p.add_argument("--port", type=int, default=0, help="gRPC port (default: any free one)")
    p.add_argument("--memory-gb", type=float,
                   help="memory budget to advertise (default: 75%% of physical memory)")
    p.add_argument("--node-id", help="this node's id (default: the host name)")
    p.add_argument("--no-mdns", action="store_true", help="do not advertise by mDNS")
    p.add_argument("--group-timeout", type=float, default=DEFAULT_TIMEOUT_S, metavar="S",
                   help="fail a job whose group makes no progress for S seconds "
                        f"(default {DEFAULT_TIMEOUT_S:g})")
    p.set_defaults(run=run)


def run(args) -> int:
    for flag, value in (("--memory-gb", args.memory_gb), ("--group-timeout", args.group_timeout)):
        if value is not None and value <= 0:
            print(f"exo-spec worker: error: {flag} must be > 0, got {value}", file=sys.stderr)
            return 2
    node = this_node(args.node_id, args.host, args.memory_gb)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format=f"%(asctime)s exo-spec worker {node.node_id}: %(message)s")
    try:
        return asyncio.run(serve(node, args.port, mdns=not args.no_mdns,
                                 group_timeout_s=args.group_timeout))
    except KeyboardInterrupt:
        return 0


async def serve(node: Node, port: int, *, mdns: bool, group_timeout_s: float) -> int:
    server = grpc.aio.server()
    placements = Placements()
    control = WorkerControl(node, placements, group_timeout_s)
    worker_pb2_grpc.add_WorkerControlServicer_to_server(control, server)
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
