"""Scaling out: replicas that share the work through leases in the store.

    hashing.py     aggregate id → partition (CRC-32 of its UTF-8 bytes, modulo the partition count)
    leases.py      LeaseKeeper: heartbeats, fair shares, rebalancing, fencing tokens
    ownership.py   which partitions this replica owns; the topology clients route by
    addresses.py   the address a replica advertises to clients

Ownership is an optimisation, never a correctness condition: any replica
executes any command under the database's checks. See docs/scaling.md.
"""
