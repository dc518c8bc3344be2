"""Choosing orchestrators for a segment: a pure function, tested without sockets.

Rules, in order:

1. **Eligibility.** An orchestrator is a candidate only when it is not suspended, passes the
   operator's include/exclude lists, has a known OrchestratorInfo whose capabilities are
   compatible with the job (go-livepeer ``CompatibleWith``), and whose price per pixel
   (``pricePerUnit / pixelsPerUnit``) is at most the gateway's cap — both the overall cap and,
   for capabilities the job uses, any per-capability cap against the orchestrator's
   per-capability price. Orchestrators without info yet are candidates of last resort (their
   info is fetched when tried) unless ``allow_unknown`` is false.
2. **Score** (lower is better): expected seconds of round trip per second of media, taken from a
   moving average (not go-livepeer's last sample, whose noise causes churn), inflated by the
   share of capacity already in flight (so one stream's concurrent segments spread over
   orchestrators) and by the recent failure rate:
   ``latency * (1 + 2 * in_flight / capacity) * (1 + 2 * failure_rate)``. An orchestrator never
   measured is assumed as fast as the best measured one (optimism under uncertainty), so each
   is tried early and then ranked by what it really does.
3. **Exploration.** With probability ``explore`` one random candidate other than the best, among
   those with free capacity, moves to the front, so a recovered or improved orchestrator gets
   measured again.

Live AI (capability 35, :func:`select_live`) picks as go-livepeer's live selector does: only
orchestrators advertising a model constraint for the pipeline, not suspended and within the
include/exclude lists and the capability-35 price cap; warm ones first, then by the round trip
of their last GetOrchestrator, then by price.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction

from streamgw.livepeer.capabilities import Capabilities, Capability, compatible_with


@dataclass(frozen=True, slots=True)
class Candidate:
    """What selection knows of one orchestrator at one moment."""

    url: str
    capabilities: Capabilities | None  # None: no OrchestratorInfo yet
    price: Fraction | None = None  # wei per pixel
    capability_prices: Mapping[int, Fraction] = field(default_factory=dict)
    latency: float | None = None  # moving average of round-trip seconds per media second
    failure_rate: float = 0.0  # of recent attempts
    in_flight: int = 0
    capacity: int = 1
    suspended: bool = False
    discovery_rtt: float | None = None  # seconds of its last GetOrchestrator


@dataclass(frozen=True, slots=True)
class SelectionPolicy:
    """The operator's constraints and the exploration rate."""

    job: Capabilities = field(default_factory=Capabilities)
    max_price: Fraction | None = None  # wei per pixel; None: no cap
    max_price_per_capability: Mapping[int, Fraction] = field(default_factory=dict)
    include: frozenset[str] = frozenset()  # when non-empty, only these URLs
    exclude: frozenset[str] = frozenset()
    explore: float = 0.1
    allow_unknown: bool = True


def eligible(c: Candidate, policy: SelectionPolicy) -> bool:
    """Rule 1: may ``c`` be used at all?"""
    if c.suspended or c.url in policy.exclude or (policy.include and c.url not in policy.include):
        return False
    if c.capabilities is None:
        return policy.allow_unknown
    if not compatible_with(policy.job, c.capabilities):
        return False
    if policy.max_price is not None and c.price is not None and c.price > policy.max_price:
        return False
    job_caps = policy.job.ids
    for cap, limit in policy.max_price_per_capability.items():
        price = c.capability_prices.get(cap)
        if cap in job_caps and price is not None and price > limit:
            return False
    return True


def score(c: Candidate, default_latency: float) -> float:
    """Rule 2: expected round-trip seconds per media second; lower is better."""
    latency = c.latency if c.latency is not None else default_latency
    load = 1 + 2 * c.in_flight / max(1, c.capacity)
    return latency * load * (1 + 2 * c.failure_rate)


def select(candidates: Sequence[Candidate], policy: SelectionPolicy, rng: random.Random) -> list[Candidate]:
    """The eligible candidates, best first (rule 3 may promote one at random)."""
    pool = [c for c in candidates if eligible(c, policy)]
    known = [c.latency for c in pool if c.latency is not None]
    default = min(known) if known else 1.0
    # Orchestrators with info come before those without; then by score; at equal score an
    # unmeasured one first (so it gets measured); URL breaks remaining ties.
    ranked = sorted(pool, key=lambda c: (c.capabilities is None, score(c, default), c.latency is not None, c.url))
    roomy = [i for i, c in enumerate(ranked[1:], start=1) if c.in_flight < c.capacity]
    if roomy and rng.random() < policy.explore:
        # Explore only among orchestrators with free capacity: a full one would just refuse.
        pick = roomy[rng.randrange(len(roomy))]
        ranked.insert(0, ranked.pop(pick))
    return ranked


LIVE_VIDEO_TO_VIDEO = int(Capability.LIVE_VIDEO_TO_VIDEO)


def select_live(candidates: Sequence[Candidate], model_id: str, policy: SelectionPolicy,
                url_contains: str = "") -> list[Candidate]:
    """The candidates for a live stream of ``model_id``, best first (see the module's rules)."""
    def offers(c: Candidate) -> bool:
        return c.capabilities is not None and model_id in c.capabilities.per_capability.get(LIVE_VIDEO_TO_VIDEO, {})

    limit = policy.max_price_per_capability.get(LIVE_VIDEO_TO_VIDEO)
    pool = [c for c in candidates
            if offers(c) and not c.suspended and c.url not in policy.exclude
            and (not policy.include or c.url in policy.include) and url_contains in c.url
            and (limit is None or c.capability_prices.get(LIVE_VIDEO_TO_VIDEO, Fraction(0)) <= limit)]

    def warm(c: Candidate) -> bool:
        assert c.capabilities is not None
        return c.capabilities.per_capability[LIVE_VIDEO_TO_VIDEO][model_id].warm

    return sorted(pool, key=lambda c: (not warm(c), c.discovery_rtt if c.discovery_rtt is not None else float("inf"),
                                       c.capability_prices.get(LIVE_VIDEO_TO_VIDEO, c.price or Fraction(0)), c.url))


def live_models(candidates: Sequence[Candidate]) -> dict[str, int]:
    """Every live pipeline (model id) the candidates advertise, with how many offer it."""
    found: dict[str, int] = {}
    for c in candidates:
        if c.capabilities is not None:
            for model in c.capabilities.per_capability.get(LIVE_VIDEO_TO_VIDEO, {}):
                found[model] = found.get(model, 0) + 1
    return found
