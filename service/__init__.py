"""Chronicle: a gRPC command-processing service for event sourcing."""

__version__ = "0.5.0"
