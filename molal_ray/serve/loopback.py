"""Serve replicas of the local runtime listen on loopback only.

Ray 2.60's Serve replica starts an inter-deployment gRPC server on every interface
(``ray/serve/_private/replica.py``: ``add_port_to_grpc_server(self._server, "[::]:0")``, whatever
the node's address), after the deployment's constructor ran. On the local runtime, whose every
other server listens on 127.0.0.1 (``runtime.init_local``), that one port would be reachable from
the network. A deployment's constructor calls :func:`bind_replica_servers_to_loopback` first: on a
node whose address is the loopback one, the replica's server is bound there instead. On a cluster
(a routable node address) nothing changes: other nodes must reach the replica.
"""

from __future__ import annotations

from typing import Any

LOOPBACK = "127.0.0.1"
_ALL_INTERFACES = "[::]:"


def bind_replica_servers_to_loopback() -> bool:
    """In a Serve replica of a loopback node: make the replica's own gRPC server bind 127.0.0.1
    (returns True); elsewhere nothing (False). Idempotent."""
    import ray
    from ray.serve._private import replica

    if ray.util.get_node_ip_address() != LOOPBACK:
        return False
    original = replica.add_port_to_grpc_server
    if getattr(original, "_molal_loopback", False):
        return True

    def bind(server: Any, address: str) -> Any:
        if address.startswith(_ALL_INTERFACES):
            address = f"{LOOPBACK}:{address[len(_ALL_INTERFACES) :]}"
        return original(server, address)

    bind._molal_loopback = True  # type: ignore[attr-defined]
    replica.add_port_to_grpc_server = bind
    return True
