"""Replicas on a throwaway PostgreSQL, for the Node.js client's routing test.

    python -m tests.support.node_cluster --replicas 2

Starts a PostgreSQL cluster of its own (``tests/support/postgres.py``) and
the replicas (server processes with two-second leases), waits until they
share the partitions, prints one JSON line (each replica's address and
process id), and shuts everything down when its standard input closes (the
Node test ends, or dies).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import grpc

from chronicle.v1 import cluster_service_pb2, cluster_service_pb2_grpc
from tests.support.postgres import start_cluster
from tests.support.processes import Replica


def _shared(addresses: list[str], timeout: float = 30.0) -> None:
    """Wait until every replica owns some partitions, as the first sees it."""
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(addresses[0]) as channel:
        stub = cluster_service_pb2_grpc.ClusterServiceStub(channel)
        while time.monotonic() < deadline:
            topology = stub.GetTopology(cluster_service_pb2.GetTopologyRequest(), timeout=5).topology
            if len(set(topology.partition_owners) - {""}) == len(addresses) and all(topology.partition_owners):
                return
            time.sleep(0.1)
    raise TimeoutError("the replicas did not share the partitions out")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--replicas", type=int, default=2)
    # For tests that create subscription groups (an admin action) without --auth.
    parser.add_argument("--anonymous-admin", action="store_true")
    # For tests of a replica that drains as it stops (SIGTERM).
    parser.add_argument("--shutdown-drain")
    args = parser.parse_args()
    extra = ["--lease-seconds", "2", *(["--anonymous-admin"] if args.anonymous_admin else [])]
    if args.shutdown_drain:
        extra += ["--shutdown-drain", args.shutdown_drain]
    cluster = start_cluster(own=True)
    replicas: list[Replica] = []
    try:
        url = cluster.create_database()
        logs = Path(tempfile.mkdtemp(prefix="chronicle-node-cluster-"))
        for n in range(args.replicas):
            server = Replica(url, log_path=logs / f"replica-{n}.log", extra=extra)
            server.start(wait=False)
            replicas.append(server)
        for server in replicas:
            server.wait_until_serving()
        _shared([server.address for server in replicas])
        print(json.dumps({"replicas": [{"address": r.address, "pid": r.process.pid} for r in replicas]}), flush=True)
        sys.stdin.read()  # until the test closes it
        return 0
    finally:
        for server in replicas:
            server.close()
        cluster.shutdown()


if __name__ == "__main__":
    raise SystemExit(main())
