"""The operators' web console (``--console-listen``, docs/console.md):
server-rendered pages over the same servicers and policy as the gRPC API."""
