"""A model replica's process holds what it runs, not what Ray Serve might have used.

Ray Serve imports pandas whenever it is installed (``ray.serve._private.utils``: only to
JSON-encode a DataFrame a deployment returns, which no maas app does), and maas's environment
has it for MLflow. In a replica that costs ~40 MiB resident (pandas' modules and libraries,
measured in bench/serve_bench.py). Ray runs a worker's setup hook after the worker connects
and before it loads the actor, so the hook below makes ``import pandas`` fail for Serve's
optional import, in the replicas of the apps that ask for it (the classic and text model
apps, the root app), and nowhere else (the deploying job's own runtime_env is kept).
``MALLOC_ARENA_MAX=2`` keeps glibc from giving each of a Ray worker's many threads its own
heap arena (~10 MiB per replica, measured).
:func:`quiet_gc` spaces out the garbage collector's young-generation passes in a model
replica.

Ray reads the hook from ``WORKER_PROCESS_SETUP_HOOK_ENV`` (its constant
``ray._private.ray_constants.WORKER_PROCESS_SETUP_HOOK_ENV_VAR``; its public
``worker_process_setup_hook`` field only sets that variable for a whole job). A unit test
holds the name to the installed Ray's, and the serving integration test checks a replica's
mapped libraries.
"""

import gc
import sys
from typing import Any

# Allocations between two young-generation collections (CPython's default: 700). A request
# allocates a few hundred objects, nearly all freed by reference counting before any
# collection sees them; collecting every ~2 requests was measured at 5-10% of the replica's
# throughput on this machine (bench/RESULTS.md). Garbage that cycles waits a little longer.
GC_YOUNG_THRESHOLD = 20_000
WORKER_PROCESS_SETUP_HOOK_ENV = "__RAY_WORKER_PROCESS_SETUP_HOOK_ENV_VAR"
KEPT_OUT = ("pandas",)


def keep_out_unused_imports() -> None:
    """Ray's worker setup hook: what a replica never runs cannot be imported in it (a module
    already imported stays as it is)."""
    for module in KEPT_OUT:
        sys.modules.setdefault(module, None)  # type: ignore[arg-type]  # None: not importable


def quiet_gc() -> None:
    """Collect the young generation every GC_YOUNG_THRESHOLD allocations. (No ``gc.freeze``
    here: a version swapped out by a promotion must stay collectable; Serve already froze
    what its startup made.)"""
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)


def lean_runtime_env() -> dict[str, Any]:
    """The ``runtime_env`` of a lean replica, for ``ray_actor_options``: the deploying job's
    (or the config app's) runtime_env made lean (:func:`made_lean`)."""
    import ray

    return made_lean(dict(ray.get_runtime_context().runtime_env) if ray.is_initialized()
                     else {})


def made_lean(inherited: dict[str, Any]) -> dict[str, Any]:
    """``inherited`` with a lean replica's environment variables added. Serve gives a
    deployment that sets its own runtime_env only the deploying job's ``working_dir``, so a
    lean one starts from the job's whole runtime_env, as Serve would have. A setup hook the
    job already has stays (Ray takes one per worker): that replica then keeps pandas."""
    env_vars = dict(inherited.get("env_vars") or {})
    env_vars.setdefault(WORKER_PROCESS_SETUP_HOOK_ENV,
                        f"{__name__}.{keep_out_unused_imports.__name__}")
    env_vars.setdefault("MALLOC_ARENA_MAX", "2")
    return inherited | {"env_vars": env_vars}
