"""A replica's usage meter against a real access store (a SQLite file, and a database on the
session's PostgreSQL server): what it writes, what a failed write leaves for the next flush,
and that requests counted while a flush runs are never lost."""

import threading

import pytest

from maas.access import AccessStore
from serve_apps.metering import UsageMeter

pytestmark = pytest.mark.unit


@pytest.fixture
def store(store_url: str) -> AccessStore:
    return AccessStore(store_url)


def _totals(store: AccessStore) -> dict[tuple[str, str, int], tuple]:
    return {(r.tenant, r.version, r.status): (r.requests, r.rows, r.prompt_tokens,
                                              r.completion_tokens, r.mean_latency_ms)
            for r in store.usage()}


def test_each_flush_writes_what_was_counted_since_the_last(store):
    meter = UsageMeter(store)
    for ms in (2.0, 4.0):
        meter.record("acme", "k1", "digits", "3", 200, 5, ms)
    meter.record("acme", "k1", "digits", "3", 429, 0, 0.5)
    meter.record("beta", "k2", "digits", "-", 200, 1, 6.0, prompt_tokens=7,
                 completion_tokens=9)
    meter.flush()
    assert _totals(store) == {("acme", "3", 200): (2, 10, 0, 0, 3.0),
                              ("acme", "3", 429): (1, 0, 0, 0, 0.5),
                              ("beta", "-", 200): (1, 1, 7, 9, 6.0)}
    meter.flush()  # nothing new: nothing added twice
    meter.record("acme", "k1", "digits", "3", 200, 5, 9.0)
    meter.flush()
    assert _totals(store)[("acme", "3", 200)] == (3, 15, 0, 0, 5.0)


class FailingOnce(AccessStore):
    """The real store, whose next write fails (as a locked or unreachable database does)."""

    fail = True

    def add_usage(self, counts) -> None:
        if self.fail:
            self.fail = False
            raise OSError("database is locked")
        super().add_usage(counts)


def test_a_failed_write_leaves_its_counts_for_the_next_flush(store_url):
    store = FailingOnce(store_url)
    meter = UsageMeter(store)
    meter.record("acme", "k1", "digits", "3", 200, 5, 2.0)
    with pytest.raises(OSError):
        meter.flush()
    meter.record("acme", "k1", "digits", "3", 200, 5, 4.0)
    meter.flush()
    assert _totals(store) == {("acme", "3", 200): (2, 10, 0, 0, 3.0)}


def test_requests_counted_while_flushes_run_are_all_written(store):
    """The meter's record runs on the event loop while the gate's thread flushes: hammer both
    at once, and every request, row and millisecond must reach the store exactly once."""
    meter, n = UsageMeter(store), 300_000
    done, flushed = threading.Event(), threading.Event()

    def count() -> None:
        for i in range(n):
            if i == n // 2:  # half counted: go on once a flush has run (no race on timing)
                flushed.wait(timeout=60)
            meter.record("acme", "k1", "digits", "3", 200 if i % 3 else 500, 2, 0.25)
        done.set()

    recorder = threading.Thread(target=count)
    recorder.start()
    flushes = 0
    while not done.is_set():
        meter.flush()
        flushes += 1
        flushed.set()
    recorder.join()
    meter.flush()
    rows = store.usage()
    assert flushes >= 2  # at least one flush ran while the counting went on
    assert sum(r.requests for r in rows) == n
    assert sum(r.rows for r in rows) == 2 * n
    assert sum(r.mean_latency_ms * r.requests for r in rows) == pytest.approx(0.25 * n)


def test_a_minute_long_past_is_forgotten_once_written(store):
    meter = UsageMeter(store)
    meter.record("acme", "k1", "digits", "3", 200, 1, 1.0)
    meter.FORGET_AFTER_S = -120  # as if three minutes had passed since that minute
    meter.flush()
    assert _totals(store) == {("acme", "3", 200): (1, 1, 0, 0, 1.0)}
    assert not meter._totals and not meter._written
    meter.flush()
    assert _totals(store) == {("acme", "3", 200): (1, 1, 0, 0, 1.0)}


def test_two_flushes_at_once_write_each_request_once(store):
    """The gate's thread flushes while close() flushes on another: never the same gain twice."""
    meter = UsageMeter(store)
    for _ in range(50):
        for _ in range(20):
            meter.record("acme", "k1", "digits", "3", 200, 1, 1.0)
        flushers = [threading.Thread(target=meter.flush) for _ in range(3)]
        for flusher in flushers:
            flusher.start()
        for flusher in flushers:
            flusher.join()
    assert _totals(store) == {("acme", "3", 200): (1000, 1000, 0, 0, 1.0)}


def _flusher(meter: UsageMeter, stop: threading.Event) -> threading.Thread:
    """The gate's background thread, as it runs: a flush whenever an answer waits."""

    def run() -> None:
        while not stop.is_set():
            meter.wanted.wait(1.0)
            meter.wanted.clear()
            try:
                meter.flush()
            except OSError:
                pass  # kept for the next flush, as the gate does

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_an_answer_waits_until_its_usage_is_stored(store):
    """access.usage_durable: each of 50 concurrent requests, once ``stored()`` returns, is
    already in the usage table; they are written in fewer transactions than requests."""
    import asyncio

    writes = []
    add_usage = store.add_usage
    store.add_usage = lambda counts: (writes.append(len(counts)), add_usage(counts))[1]
    meter, stop = UsageMeter(store), threading.Event()
    _flusher(meter, stop)

    async def request(i: int) -> int:
        await asyncio.sleep(0.001 * (i % 5))
        meter.record("acme", "k1", "digits", "1", 200, 1, 1.0)
        assert await meter.stored(5.0)
        return sum(r.requests for r in store.usage(tenant="acme"))  # seen when answered

    async def main() -> list[int]:
        return await asyncio.gather(*(request(i) for i in range(50)))

    seen = asyncio.run(main())
    stop.set()
    meter.wanted.set()
    assert sum(r.requests for r in store.usage(tenant="acme")) == 50
    assert all(count >= i + 1 for i, count in enumerate(sorted(seen))), seen
    assert 1 <= len(writes) < 50, writes


def test_an_answer_waits_no_longer_than_its_timeout_when_the_store_is_down(store_url):
    import asyncio

    class Down(AccessStore):
        def add_usage(self, counts) -> None:
            raise OSError("could not connect to server")

    meter, stop = UsageMeter(Down(store_url)), threading.Event()
    _flusher(meter, stop)
    meter.record("acme", "k1", "digits", "1", 200, 1, 1.0)
    assert asyncio.run(meter.stored(0.3)) is False
    stop.set()
    meter.wanted.set()
    assert meter._totals  # still counted, for the flush once the store is back
