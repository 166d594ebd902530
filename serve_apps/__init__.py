"""Ray Serve applications. Each module exposes ``build_app(args) -> Application``."""

# maas's own log lines in a replica: a child of Serve's logger, so they reach the replica's
# log files through Serve's handlers, with a level of their own where a model replica raises
# Serve's to WARNING (serve_apps.inference: no per-request access-log record).
REPLICA_LOG = "ray.serve.maas"
