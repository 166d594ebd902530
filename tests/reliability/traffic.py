"""Steady client load for the fault tests, counting what the clients saw."""

import threading
import time
from collections import Counter

import requests


class Load:
    """``clients`` threads posting one request after another until stopped; each outcome is
    counted (HTTP status, or the exception's name).

    Retried, as a sensible client does and as is safe here (an inference changes nothing):
    a connection that fails, every 0.2 s for up to RETRY_S; a 5xx answer (Serve's own 500 when
    the replica died holding the request), up to RETRY_5XX times. Retries are counted apart,
    the 5xx ones by status; a request is *failed* when it got no 200 in the end."""

    RETRY_S = 60.0  # more than the proxy restart takes here (24-30 s)
    RETRY_5XX = 2

    def __init__(self, url: str, body: dict, clients: int = 8, headers: dict | None = None):
        self.url, self.body, self.headers = url, body, headers or {}
        self.outcomes: Counter = Counter()
        self.last: dict[int | str, float] = {}  # outcome -> when it was last seen (monotonic)
        self.retries = 0
        self.retried: Counter = Counter()  # 5xx answers that were retried, by status
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._client) for _ in range(clients)]

    def _client(self) -> None:
        with requests.Session() as session:
            while not self._stop.is_set():
                outcome = self._send(session)
                self.outcomes[outcome] += 1
                self.last[outcome] = time.monotonic()

    def _send(self, session: requests.Session) -> int | str:
        give_up = time.monotonic() + self.RETRY_S
        answers_left = self.RETRY_5XX
        while True:
            try:
                status = session.post(self.url, json=self.body, headers=self.headers,
                                      timeout=30).status_code
                if status < 500 or answers_left == 0 or self._stop.is_set():
                    return status
                answers_left -= 1
                self.retried[status] += 1
                self.retries += 1
                time.sleep(0.2)
            except requests.ConnectionError as exc:
                if time.monotonic() > give_up or self._stop.is_set():
                    return type(exc).__name__
                self.retries += 1
                time.sleep(0.2)
            except requests.RequestException as exc:
                return type(exc).__name__

    @property
    def sent(self) -> int:
        return sum(self.outcomes.values())

    def summary(self) -> dict:
        """What the clients got in the end, by HTTP status or exception name, and the 5xx
        answers they retried."""
        final = dict(sorted(self.outcomes.items(), key=str))
        return final | {"retried": dict(self.retried)} if self.retried else final

    def row(self, test: str, fault: str, recovery_s: float, note: str = "") -> dict:
        """This load's figures as a RELIABILITY.md row."""
        return {"test": test, "fault": fault,
                "load": f"{len(self._threads)} clients{note}; answers {self.summary()}",
                "sent": self.sent, "failed": self.failed, "retries": self.retries,
                "recovery_s": recovery_s, "command": "make test-reliability"}

    @property
    def failed(self) -> int:
        return self.sent - self.outcomes[200]

    def __enter__(self) -> "Load":
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)

    def until(self, sent: int, timeout_s: float = 120) -> None:
        deadline = time.monotonic() + timeout_s
        while self.sent < sent and time.monotonic() < deadline:
            time.sleep(0.1)


def paced(url: str, body: dict, headers: dict, per_s: float, seconds: float, clients: int = 6
          ) -> tuple[Counter, float]:
    """``per_s`` requests a second for ``seconds``, each sent at its time on a fixed schedule
    over ``clients`` threads (a rate offered, whatever the answers): (statuses, seconds it
    took, from the first request's time)."""
    results: Counter = Counter()
    total = int(per_s * seconds)
    start = time.monotonic() + 0.5

    def client(offset: int) -> None:
        with requests.Session() as session:
            for i in range(offset, total, clients):
                delay = start + i / per_s - time.monotonic()
                if delay > 0:
                    time.sleep(delay)  # the schedule, not a wait for a condition
                results[session.post(url, json=body, headers=headers,
                                     timeout=30).status_code] += 1

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=seconds + 60)
    return results, time.monotonic() - start
