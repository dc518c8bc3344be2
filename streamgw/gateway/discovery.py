"""Which orchestrators exist and what they offer: a static list and/or a webhook, refreshed.

The pool keeps each orchestrator's OrchestratorInfo (capabilities, prices, capacity, auth token;
its certificate is pinned by the client) and refreshes it in the background, in parallel and
with bounded timeouts, before the auth token expires. It also keeps the health record that
selection reads: a moving average of latency, recent outcomes, and suspension with a penalty
that doubles with each consecutive failure and resets on success. Only the orchestrator's own
failures count: a busy refusal is counted apart (``busy_refusals``) and a segment it rejected
for the segment's own fault (``segments_rejected``) is no mark against it.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from fractions import Fraction

import httpx

from streamgw.errors import StreamgwError
from streamgw.gateway.selection import Candidate
from streamgw.livepeer import lp_rpc_pb2 as pb
from streamgw.livepeer.capabilities import Capabilities, Capability
from streamgw.livepeer.client import OrchestratorClient

log = logging.getLogger(__name__)

LATENCY_ALPHA = 0.3  # weight of the newest sample in the latency moving average
OUTCOME_WINDOW = 20  # attempts remembered for the failure rate
OUTCOME_MAX_AGE = 60.0  # seconds after which an attempt no longer counts
SUSPEND_BASE = 2.0  # seconds of the first suspension; doubles per consecutive failure
SUSPEND_MAX = 300.0
REFRESH_MARGIN = 300.0  # refresh info this long before its auth token expires
DEFAULT_CAPACITY = 4


@dataclass(slots=True)
class OrchestratorRecord:
    """Everything the gateway knows of one orchestrator."""

    url: str
    client: OrchestratorClient
    score_hint: float = 0.0  # from the webhook, informational
    info: pb.OrchestratorInfo | None = None
    latency: float | None = None
    outcomes: collections.deque[tuple[float, bool]] = field(
        default_factory=lambda: collections.deque(maxlen=OUTCOME_WINDOW)
    )
    consecutive_failures: int = 0
    suspended_until: float = 0.0  # time.monotonic()
    in_flight: int = 0
    segments: int = 0
    failures: int = 0
    busy_refusals: int = 0  # attempts refused for lack of capacity
    segments_rejected: int = 0  # segments it could not transcode because of the segment
    last_error: str | None = None
    last_seconds: float = 0.0
    discovery_rtt: float | None = None  # seconds of the last GetOrchestrator (live AI orders by it)

    def success_rate(self, now: float) -> float | None:
        """Share of recent attempts (the last 20, within a minute) that succeeded; None without any."""
        recent = [ok for at, ok in self.outcomes if now - at <= OUTCOME_MAX_AGE]
        return sum(recent) / len(recent) if recent else None

    def suspended(self, now: float) -> bool:
        """True while serving a suspension."""
        return now < self.suspended_until

    def candidate(self, now: float) -> Candidate:
        """The snapshot selection works on."""
        info = self.info
        caps = Capabilities.from_proto(info.capabilities) if info and info.HasField("capabilities") else None
        price = None
        cap_prices: dict[int, Fraction] = {}
        capacity = DEFAULT_CAPACITY
        if info is not None:
            if info.price_info.pixelsPerUnit > 0:
                price = Fraction(info.price_info.pricePerUnit, info.price_info.pixelsPerUnit)
            for p in info.capabilities_prices:
                if p.pixelsPerUnit > 0:
                    cap_prices[p.capability] = Fraction(p.pricePerUnit, p.pixelsPerUnit)
            capacity = info.capabilities.capacities.get(int(Capability.H264), DEFAULT_CAPACITY) or DEFAULT_CAPACITY
        success = self.success_rate(now)
        rate = 1 - success if success is not None else 0.0
        return Candidate(self.url, caps, price, cap_prices, self.latency, rate, self.in_flight, capacity,
                         self.suspended(now), self.discovery_rtt)


class OrchestratorPool:
    """The orchestrators a gateway may use, with their info and health."""

    def __init__(
        self,
        make_client: Callable[[str], OrchestratorClient],
        *,
        static: list[str],
        webhook_url: str = "",
        job: Capabilities | None = None,
        refresh_interval: float = 60.0,
        discovery_timeout: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._make_client = make_client
        self.webhook_url = webhook_url
        self.job = job
        self.refresh_interval = refresh_interval
        self.discovery_timeout = discovery_timeout
        self._clock = clock
        self.records: dict[str, OrchestratorRecord] = {}
        self.last_discovery_error: str | None = None
        for url in static:
            self._add(url)
        self._task: asyncio.Task[None] | None = None

    def _add(self, url: str, score: float = 0.0) -> OrchestratorRecord:
        url = url.rstrip("/") if "://" in url else "https://" + url.rstrip("/")
        record = self.records.get(url)
        if record is None:
            record = OrchestratorRecord(url, self._make_client(url))
            self.records[url] = record
        record.score_hint = score
        return record

    def candidates(self) -> list[Candidate]:
        """Snapshots of every known orchestrator for selection."""
        now = self._clock()
        return [r.candidate(now) for r in self.records.values()]

    # --- health ---

    def started(self, url: str) -> None:
        """An attempt on ``url`` begins."""
        self.records[url].in_flight += 1

    def succeeded(self, url: str, seconds: float, media_seconds: float) -> None:
        """An attempt succeeded after ``seconds`` for ``media_seconds`` of media."""
        r = self.records[url]
        r.in_flight -= 1
        r.segments += 1
        r.outcomes.append((self._clock(), True))
        r.consecutive_failures = 0
        r.suspended_until = 0.0
        r.last_error = None
        r.last_seconds = seconds
        sample = seconds / max(media_seconds, 0.001)
        r.latency = sample if r.latency is None else (1 - LATENCY_ALPHA) * r.latency + LATENCY_ALPHA * sample

    def busy(self, url: str) -> None:
        """An attempt was refused for lack of capacity: counted, no suspension, the session stays."""
        r = self.records[url]
        r.in_flight -= 1
        r.busy_refusals += 1
        r.last_error = "busy"

    def abandoned(self, url: str) -> None:
        """An attempt on ``url`` was cancelled before it ended: no outcome, no longer in flight."""
        self.records[url].in_flight -= 1

    def rejected(self, url: str) -> None:
        """``url`` answered that the segment itself cannot be transcoded: the stream's fault, not its.

        A proper answer all the same: it counts as a good outcome (no latency sample: no transcode).
        """
        r = self.records[url]
        r.in_flight -= 1
        r.segments_rejected += 1
        r.outcomes.append((self._clock(), True))
        r.consecutive_failures = 0
        r.last_error = None

    def failed(self, url: str, error: str, *, forget_info: bool) -> float:
        """An attempt failed; suspends ``url`` and returns the suspension in seconds."""
        r = self.records[url]
        r.in_flight -= 1
        r.failures += 1
        r.outcomes.append((self._clock(), False))
        r.consecutive_failures += 1
        r.last_error = error
        penalty = min(SUSPEND_MAX, SUSPEND_BASE * 2 ** (r.consecutive_failures - 1))
        r.suspended_until = self._clock() + penalty
        if forget_info:
            r.info = None
        return float(penalty)

    def suspend(self, url: str, error: str, seconds: float) -> None:
        """Keep ``url`` out of selection for ``seconds`` (live AI: a stalled or slow orchestrator)."""
        r = self.records[url]
        r.failures += 1
        r.outcomes.append((self._clock(), False))
        r.last_error = error
        r.suspended_until = max(r.suspended_until, self._clock() + seconds)

    async def ensure_info(self) -> None:
        """Fetch the OrchestratorInfo of every orchestrator that has none yet, in parallel (bounded)."""
        missing = [r for r in self.records.values() if r.info is None and not r.suspended(self._clock())]
        results = await asyncio.gather(*(self._fetch(r) for r in missing), return_exceptions=True)
        for record, result in zip(missing, results, strict=True):
            if isinstance(result, BaseException):
                record.last_error = str(result) or type(result).__name__

    # --- info ---

    async def orchestrator_info(self, url: str) -> pb.OrchestratorInfo:
        """Current OrchestratorInfo of ``url``, fetched now if missing or about to expire."""
        r = self.records[url]
        info = r.info
        if info is None or info.auth_token.expiration - time.time() < REFRESH_MARGIN:
            # The client bounds it: past the timeout, OrchestratorUnavailable.
            info = await self._fetch(r)
        return info

    async def refresh_info(self, url: str) -> pb.OrchestratorInfo:
        """A fresh GetOrchestrator now (new ticket params), whatever the cached info's age."""
        return await self._fetch(self.records[url])

    def update_info(self, url: str, info: pb.OrchestratorInfo) -> None:
        """Take the fresh OrchestratorInfo an orchestrator returned with a result."""
        self.records[url].info = info

    async def refresh(self) -> None:
        """Re-read the webhook, then fetch every stale OrchestratorInfo in parallel (bounded)."""
        if self.webhook_url:
            await self._read_webhook()
        stale = [r for r in self.records.values()
                 if r.info is None or r.info.auth_token.expiration - time.time() < REFRESH_MARGIN]
        results = await asyncio.gather(*(self._refresh_one(r) for r in stale), return_exceptions=True)
        for record, result in zip(stale, results, strict=True):
            if isinstance(result, BaseException):
                record.last_error = str(result) or type(result).__name__

    async def _refresh_one(self, record: OrchestratorRecord) -> None:
        await self._fetch(record)

    async def _fetch(self, record: OrchestratorRecord) -> pb.OrchestratorInfo:
        started = time.monotonic()
        info = await record.client.get_orchestrator(self.job, timeout=self.discovery_timeout)
        record.discovery_rtt = time.monotonic() - started
        record.info = info
        return info

    async def _read_webhook(self) -> None:
        try:
            async with httpx.AsyncClient(timeout=self.discovery_timeout) as http:
                response = await http.get(self.webhook_url)
                response.raise_for_status()
                entries = response.json()
            if not isinstance(entries, list):
                raise ValueError("expected a JSON list")
            found = []
            for entry in entries[:1000]:
                if isinstance(entry, Mapping) and isinstance(entry.get("address"), str):
                    score = entry.get("score", 0.0)
                    self._add(entry["address"], float(score) if isinstance(score, (int, float)) else 0.0)
                    found.append(entry["address"])
            self.last_discovery_error = None
            log.debug("webhook listed %d orchestrators", len(found))
        except (httpx.HTTPError, ValueError) as exc:
            self.last_discovery_error = f"orchestrator webhook {self.webhook_url}: {exc}"
            log.warning("%s", self.last_discovery_error)

    async def run(self) -> None:
        """Refresh now and every ``refresh_interval`` seconds until cancelled."""
        while True:
            try:
                await self.refresh()
            except StreamgwError as exc:  # pragma: no cover - refresh records its own errors
                log.warning("discovery: %s", exc)
            await asyncio.sleep(self.refresh_interval)

    async def close(self) -> None:
        """Close every client."""
        for r in self.records.values():
            await r.client.close()
