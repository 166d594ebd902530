"""Several processes writing one access store at once, as replicas on several machines do: a
new tenant's first keys and its acceptance made at once all succeed, usage sums and what
quotas read stay exact. On both backends (``store_url``); PostgreSQL is where replicas on
several machines share one store, and where a read-then-write loses the race."""

import multiprocessing

import pytest

from maas.access import AccessStore
from maas.config import AgreementConfig

pytestmark = pytest.mark.unit

PROCESSES, WRITES = 4, 300
MINUTE = 6000
# What every process adds to the shared key's rows each flush: [requests, rows, latency ms,
# prompt tokens, completion tokens] per status; a refusal (429) uses no quota.
SHARED = {200: [1, 1, 0.5, 3, 4], 404: [1, 0, 0.5, 3, 4], 429: [1, 0, 0.1],
          500: [1, 0, 0.5, 3, 4]}
_barrier = None


def _hold(barrier) -> None:
    global _barrier
    _barrier = barrier


def _replica(url: str, index: int) -> tuple[str, list[int]]:
    """One replica's writes, all processes starting at once: the first key of a new tenant and
    its acceptance of the agreement, then ``WRITES`` flushes as meters make them, each a new
    minute (every process races to create its rows): four rows every process adds to (the
    shared key's, by status) and one of this process's own, half the processes listing them
    in the other order (meters count in arrival order). Its key id, and what the shared
    key's quota read as every 25 flushes."""
    store = AccessStore(url)
    _barrier.wait(timeout=60)
    _, record = store.create_key("newco", ["chat"], created_by=f"replica-{index}")
    store.accept("newco", "chat", 1, f"replica-{index}")
    _barrier.wait(timeout=60)  # and the flushes start together too
    seen = []
    for n in range(1, WRITES + 1):
        minute = MINUTE + 60 * n
        counts = {(minute, "acme", "sharedkey001", "chat", "1", status): SHARED[status]
                  for status in SHARED}
        counts[(minute, "acme", f"own-{index:08d}", "chat", "1", 200)] = [1, 1, 1.0, 10, 0]
        store.add_usage(dict(reversed(counts.items())) if index % 2 else counts)
        if n % 25 == 0:
            seen.append(store.quota_used("sharedkey001", 0))
    return record.key_id, seen


def test_several_processes_writing_at_once_lose_nothing_and_fail_nothing(store_url):
    store = AccessStore(store_url)  # created before the race: the race is the writes
    store.publish("chat", AgreementConfig(license="MIT", allowed_uses=["chat"]))
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(PROCESSES)
    with context.Pool(PROCESSES, initializer=_hold, initargs=(barrier,)) as pool:
        done = pool.starmap(_replica, [(store_url, i) for i in range(PROCESSES)], chunksize=1)
    key_ids, seen = [d[0] for d in done], [d[1] for d in done]
    # a new tenant's first keys, made at once: every one, and one acceptance
    assert sorted(key_ids) == sorted(k.key_id for k in store.keys("newco"))
    assert len(set(key_ids)) == PROCESSES
    (accepted,) = store.acceptances(tenant="newco")
    assert accepted.version == 1 and accepted.accepted_by.startswith("replica-")
    # usage: every flush added exactly once
    total = PROCESSES * WRITES
    rows = {r.status: r for r in store.usage(tenant="acme")}
    assert {s: rows[s].requests for s in SHARED} == {200: 2 * total, 404: total, 429: total,
                                                     500: total}
    assert (rows[200].rows, rows[200].prompt_tokens, rows[200].completion_tokens) == \
        (2 * total, 13 * total, 4 * total)
    assert rows[200].mean_latency_ms == pytest.approx(0.75)
    assert len({r.start for r in store.usage(tenant="acme", bucket_s=60)}) == WRITES
    # the quota counts the admitted requests only, every one of them, and never went back
    assert store.quota_used("sharedkey001", 0) == 3 * total
    assert store.token_quota_used("sharedkey001", 0) == 21 * total
    for readings in seen:
        assert readings == sorted(readings) and readings[-1] <= 3 * total
        assert readings[0] >= 3 * 25  # this process's own writes were there, at least
