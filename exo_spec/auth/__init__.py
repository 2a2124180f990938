"""Who may use a cluster: the cluster key every coordinator, worker and admin client
shares (``key_file``), the per-call signatures that prove it over gRPC
(``signature``, ``grpc_server``, ``grpc_client``), and the API keys that let other
callers run and follow their own jobs (``callers``). See docs/DESIGN.md, "Who may
use a cluster"."""
