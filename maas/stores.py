"""Which of a deployment's stores live on one node's disk, and the refusal to run a cluster of
several nodes on them.

SQLite under ``state_dir`` (the access store, MLflow's tracking and registry database) and
artifacts under a local path are right for one machine: ``maas up``, demos, tests. On a Ray
cluster of several nodes each node's replicas and workers would open their own copy (their
own keys, limits and usage; a model registered on one node missing on another), and SQLite
on a volume the nodes share is no better: its file locks do not hold over NFS and similar
network filesystems, so concurrent writers corrupt it. Such a cluster needs PostgreSQL (or
another server database) for the access store, and an MLflow tracking server that serves
artifacts (``mlflow server --serve-artifacts``) for tracking and the registry; cluster/README.md
walks through both.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from maas.config import DeployConfig
from maas.errors import MaasError

# URL schemes of stores every node reaches over the network (the access store takes SQLite
# and PostgreSQL only; MLflow's tracking database any of these).
SERVER_DATABASES = ("postgresql", "mysql", "mssql", "oracle")
TRACKING_SERVERS = ("http", "https", "databricks")


class NodeLocalStores(MaasError):
    """The deployment's stores are on one node's disk, and the cluster spans more machines."""

    status = 409


def _scheme(url: str) -> str:
    return urlsplit(url).scheme.split("+", 1)[0].lower()


def is_server_database(url: str) -> bool:
    """Whether ``url`` is a database server every node reaches (not a file on one node)."""
    return _scheme(url) in SERVER_DATABASES


def is_tracking_server(uri: str) -> bool:
    """Whether MLflow's ``uri`` is a tracking server (which places artifacts itself)."""
    return _scheme(uri) in TRACKING_SERVERS


def node_local_stores(cfg: DeployConfig) -> list[str]:
    """The config keys, with their URLs, of the stores that live on one node's disk."""
    found = []
    if not is_server_database(cfg.access_store):
        found.append(f"access.store ({cfg.access_store})")
    if not is_tracking_server(cfg.tracking_uri):
        # A server database still leaves MLflow's artifacts under state_dir on this node.
        where = ("artifacts" if is_server_database(cfg.tracking_uri)
                 else "database and artifacts")
        found.append(f"tracking.uri ({cfg.tracking_uri}: its {where} on this node's disk)")
    registry = cfg.registry.uri
    if registry and not (is_server_database(registry) or is_tracking_server(registry)):
        found.append(f"registry.uri ({registry})")
    logged = [m.name for m in cfg.models
              if m.agreement is not None and m.agreement.data_usage.log_payloads]
    if cfg.access.enabled and logged and not cfg.access.payload_dir:
        # Set, it may be a volume every node mounts: that is the operator's to say.
        found.append(f"access.payload_dir (unset: the payloads of {', '.join(logged)} under "
                     "state_dir on each node's disk; set a folder every node mounts)")
    return found


def require_shared_stores(cfg: DeployConfig, machines: int) -> None:
    """Refuse (409) a cluster spanning ``machines`` > 1 whose stores are on one node's disk.
    (Nodes on one machine share its disk, where SQLite's locks hold.)"""
    local = node_local_stores(cfg)
    if machines > 1 and local:
        raise NodeLocalStores(
            f"this Ray cluster spans {machines} machines, but {'; '.join(local)} live on one "
            "node's disk: replicas on the other nodes would each open their own copy (SQLite on a "
            "shared volume is unsafe too: its locks do not hold over network filesystems). Set "
            "access.store to postgresql+psycopg://... and tracking.uri to an MLflow server "
            "started with --serve-artifacts (see cluster/README.md), or run on one node")


def cluster_machines() -> int:
    """Machines (distinct node addresses) of the connected Ray cluster's live nodes."""
    import ray

    return len({node["NodeManagerAddress"] for node in ray.nodes() if node.get("Alive")})
