"""LLM token limits and metering for the OpenAI-compatible routes: admit, reserve, generate,
settle.

    admission = await gate.admit(request.headers)          # 401 / 403 / 429 (key, scope,
                                                           #   agreement, request rate/quota)
    reservation = await reserve_tokens(gate, admission, prompt_tokens, max_tokens)
                                                           # 429 + Retry-After (tokens per
                                                           #   minute, token quota), 400 (never)
    ... generate ...
    settle(reservation, completion_tokens, version, status, prompt_tokens=engine_prompt_tokens)

A request reserves its prompt + ``max_tokens`` from the key's ``--tokens-per-minute`` and
``--token-quota`` before it runs, whole or not at all: a request that would cross a quota is
refused before it starts, never cut off midway. :func:`settle` meters the engine's counts
into usage (what ``maas usage`` bills) and hands the unused part of the reservation back. The
limits are counted by the store's limiter actor (serve_apps.limiter, maas.limits), so they
hold across replicas. Neither call blocks the event loop; :func:`settle` never raises.
"""

import logging
import time
from dataclasses import dataclass

from maas.access import Refusal, iso
from maas.limits import Grant
from serve_apps import REPLICA_LOG
from serve_apps.gate import AccessGate, Admission
from serve_apps.metering import ReplicaMetrics

log = logging.getLogger(REPLICA_LOG)


@dataclass
class TokenReservation:
    """Tokens held for one LLM request until :func:`settle`."""

    admission: Admission
    model: str
    prompt_tokens: int
    max_tokens: int
    reserved: int  # taken from the key's token limits; 0: the key has none (or access is off)
    started: float  # time.perf_counter() when the request arrived: its metered latency
    gate: AccessGate | None
    local: bool = False  # reserved from this replica's own buckets (the actor was unreachable)
    settled: bool = False


async def reserve_tokens(gate: AccessGate | None, admission: Admission, prompt_tokens: int,
                         max_tokens: int, started: float | None = None) -> TokenReservation:
    """Reserve ``prompt_tokens + max_tokens`` of ``admission``'s key (after
    :meth:`AccessGate.admit`; ``gate`` None: access is off, nothing is limited or metered).

    Raises :class:`maas.access.Refusal`: 429 with ``Retry-After`` over the key's tokens per
    minute or when the request would cross its token quota (the message names the limit,
    what is left and when it resets); 400 (``param`` ``max_tokens``) when the request is
    larger than the limit could ever grant. A refusal is metered by the caller, like any."""
    if prompt_tokens < 0 or max_tokens < 1:
        raise Refusal(400, f"max_tokens: must be at least 1 (got {max_tokens}), with "
                           f"{prompt_tokens} prompt tokens", admission.tenant,
                      admission.key_id, param="max_tokens")
    began = time.perf_counter() if started is None else started
    model = gate.model if gate is not None else None
    reservation = TokenReservation(admission, model or "-", prompt_tokens, max_tokens, 0,
                                   began, gate)
    record = admission.key
    if gate is None or record is None or not gate.tokens.limited(record):
        return reservation
    amount = prompt_tokens + max_tokens
    grant, local = await gate.tokens.reserve(record, amount)
    if grant.reason:
        raise _refusal(admission, grant, prompt_tokens, max_tokens)
    reservation.reserved, reservation.local = amount, local
    return reservation


def settle(reservation: TokenReservation, completion_tokens: int, version: str, status: int,
           prompt_tokens: int | None = None, metrics: ReplicaMetrics | None = None) -> None:
    """Meter a reserved request once it ended, however it ended (200, a client that went
    away: 499, an engine error: 5xx), and hand back what it did not use.

    ``completion_tokens``: what the engine generated (up to the disconnect or the error);
    ``prompt_tokens``: the engine's prompt count, when it differs from the reserved one;
    ``version``: the version that served it ("-" if none did). Both counts are metered as
    given, so billed tokens equal the engine's. ``metrics`` also gets the request and its
    tokens. A second call does nothing; a failure is logged, never raised."""
    if reservation.settled:
        return
    reservation.settled = True
    prompt = reservation.prompt_tokens if prompt_tokens is None else prompt_tokens
    completion = max(0, completion_tokens)
    admission, gate = reservation.admission, reservation.gate
    ms = (time.perf_counter() - reservation.started) * 1000.0
    rows = 1 if status == 200 else 0
    try:
        if metrics is not None:
            metrics.record(admission.tenant, reservation.model, version, status, rows, ms)
            metrics.record_tokens(reservation.model, version, prompt, completion)
        if gate is None:
            return
        if reservation.reserved and admission.key is not None:
            gate.tokens.release(admission.key, reservation.reserved - prompt - completion,
                                reservation.local)
        gate.meter.record(admission.tenant, admission.key_id, reservation.model, version,
                          status, rows, ms, prompt, completion)
    except Exception as exc:  # noqa: BLE001 - the response is already decided
        log.warning("tokens of a %s request not metered: %s", reservation.model, exc)


def meter_refused(gate: AccessGate | None, error: Exception, admission: Admission,
                  started: float, metrics: ReplicaMetrics | None = None) -> None:
    """Meter an LLM request that ended before it had a reservation (a refusal of
    :meth:`AccessGate.admit` or :func:`reserve_tokens`, a bad body): status from ``error``
    (500 unless it carries one), as the refused key's tenant when ``error`` is a Refusal."""
    status = getattr(error, "status", 500)
    if isinstance(error, Refusal):
        admission = Admission(error.tenant, error.key_id, False)
    model = gate.model if gate is not None and gate.model else "-"
    ms = (time.perf_counter() - started) * 1000.0
    if metrics is not None:
        metrics.record(admission.tenant, model, "-", status, 0, ms)
    if gate is not None:
        gate.meter.record(admission.tenant, admission.key_id, model, "-", status, 0, ms)


def _refusal(admission: Admission, grant: Grant, prompt: int, max_tokens: int) -> Refusal:
    record = admission.key
    assert record is not None
    need = (f"this request needs {prompt + max_tokens} (prompt {prompt} + max_tokens "
            f"{max_tokens})")
    quota = record.token_quota
    if grant.reason == "too_large":
        limit = (f"its token quota of {quota}" if quota is not None
                 and prompt + max_tokens > quota.limit
                 else f"its {record.tokens_per_minute} tokens per minute")
        return Refusal(400, f"max_tokens: {need}, more than {record.label} may ever use at "
                            f"once ({limit}); lower max_tokens or shorten the prompt",
                       record.tenant, record.key_id, param="max_tokens")
    retry = str(max(1, int(grant.retry_after_s + 0.999)))  # Retry-After takes whole seconds
    if grant.reason == "quota":
        message = (f"token quota: {record.label} has {max(0, grant.quota_left or 0)} of its "
                   f"{quota} left; {need}; lower max_tokens, or retry after it resets at "
                   f"{iso(grant.quota_resets_at)}")
    else:
        message = (f"tokens per minute: {record.label} may use {record.tokens_per_minute} "
                   f"tokens/min (prompt + max_tokens); {need}; retry in "
                   f"{grant.retry_after_s:.1f} s")
    return Refusal(429, message, record.tenant, record.key_id, {"Retry-After": retry})
