"""Orchestrator selection as a pure function, and the pool's health bookkeeping, without sockets."""

from __future__ import annotations

import random
from collections import Counter
from fractions import Fraction

from streamgw.gateway.discovery import SUSPEND_BASE, OrchestratorPool
from streamgw.gateway.selection import Candidate, SelectionPolicy, eligible, score, select
from streamgw.livepeer.capabilities import Capabilities, Capability, job_capabilities
from streamgw.livepeer.client import OrchestratorClient
from streamgw.livepeer.profiles import PRESETS
from streamgw.livepeer.signing import OffchainSigner
from streamgw.livepeer.tls import CertificatePins

JOB = job_capabilities([PRESETS["P240p30fps16x9"]])
O_CAPS = Capabilities.from_ids({*range(0, 13)})
NO_EXPLORE = SelectionPolicy(job=JOB, explore=0.0)


def cand(url: str, **kw: object) -> Candidate:
    base: dict[str, object] = {"capabilities": O_CAPS, "price": Fraction(0), "latency": 0.5, "capacity": 4}
    base.update(kw)
    return Candidate(url, **base)  # type: ignore[arg-type]


def urls(ranked: list[Candidate]) -> list[str]:
    return [c.url for c in ranked]


def test_incompatible_suspended_excluded_are_not_eligible() -> None:
    no_auth = Capabilities.from_ids({0, 1})
    assert not eligible(cand("a", capabilities=no_auth), NO_EXPLORE)
    assert not eligible(cand("a", suspended=True), NO_EXPLORE)
    assert not eligible(cand("a"), SelectionPolicy(job=JOB, exclude=frozenset({"a"})))
    assert not eligible(cand("a"), SelectionPolicy(job=JOB, include=frozenset({"b"})))
    assert eligible(cand("b"), SelectionPolicy(job=JOB, include=frozenset({"b"})))
    assert eligible(cand("a", capabilities=None), NO_EXPLORE), "unknown info: tried last"
    assert not eligible(cand("a", capabilities=None), SelectionPolicy(job=JOB, allow_unknown=False))


def test_price_caps() -> None:
    policy = SelectionPolicy(job=JOB, max_price=Fraction(10, 1))
    assert eligible(cand("a", price=Fraction(10)), policy)
    assert not eligible(cand("a", price=Fraction(11)), policy)
    per_cap = SelectionPolicy(job=JOB, max_price_per_capability={int(Capability.H264): Fraction(2)})
    assert not eligible(cand("a", capability_prices={int(Capability.H264): Fraction(3)}), per_cap)
    assert eligible(cand("a", capability_prices={int(Capability.H264): Fraction(2)}), per_cap)
    # A cap on a capability the job does not use does not apply.
    other = SelectionPolicy(job=JOB, max_price_per_capability={int(Capability.LIVE_VIDEO_TO_VIDEO): Fraction(0)})
    assert eligible(cand("a", capability_prices={int(Capability.LIVE_VIDEO_TO_VIDEO): Fraction(9)}), other)


def test_ranking_by_latency_load_and_failures() -> None:
    fast, slow = cand("fast", latency=0.2), cand("slow", latency=1.5)
    assert urls(select([slow, fast], NO_EXPLORE, random.Random(1))) == ["fast", "slow"]
    busy = cand("fast", latency=0.2, in_flight=8, capacity=4)  # 0.2 * 5 = 1.0
    assert urls(select([busy, cand("mid", latency=0.6)], NO_EXPLORE, random.Random(1))) == ["mid", "fast"]
    flaky = cand("flaky", latency=0.2, failure_rate=0.5)  # 0.2 * 2 = 0.4
    assert urls(select([flaky, cand("ok", latency=0.3)], NO_EXPLORE, random.Random(1))) == ["ok", "flaky"]
    unknown = cand("new", capabilities=None, latency=None)
    assert urls(select([unknown, slow], NO_EXPLORE, random.Random(1))) == ["slow", "new"]


def test_unmeasured_orchestrator_is_assumed_as_fast_as_the_best() -> None:
    pool = [cand("b", latency=0.2), cand("c", latency=0.6), cand("z-new", latency=None)]
    assert score(pool[2], 0.2) == score(pool[0], 0.2)
    ranked = urls(select(pool, NO_EXPLORE, random.Random(1)))
    assert ranked == ["z-new", "b", "c"], "a new orchestrator is measured early"


def test_exploration_sometimes_promotes_another() -> None:
    pool = [cand("best", latency=0.1), cand("b", latency=0.5), cand("c", latency=0.9)]
    rng = random.Random(7)
    firsts = Counter(select(pool, SelectionPolicy(job=JOB, explore=0.2), rng)[0].url for _ in range(2000))
    assert 0.75 < firsts["best"] / 2000 < 0.85
    assert firsts["b"] > 100 and firsts["c"] > 100
    assert all(select(pool, NO_EXPLORE, rng)[0].url == "best" for _ in range(50))


def _pool(now: list[float]) -> OrchestratorPool:
    return OrchestratorPool(lambda url: OrchestratorClient(url, OffchainSigner(), CertificatePins()),
                            static=["https://o1:8935", "https://o2:8935"], clock=lambda: now[0])


def test_suspension_grows_with_repeated_failure_and_resets_on_success() -> None:
    now = [100.0]
    pool = _pool(now)
    url = "https://o1:8935"
    penalties = []
    for _ in range(4):
        pool.started(url)
        penalties.append(pool.failed(url, "dial tcp: refused", forget_info=True))
    assert penalties == [SUSPEND_BASE, SUSPEND_BASE * 2, SUSPEND_BASE * 4, SUSPEND_BASE * 8]
    by_url = {c.url: c for c in pool.candidates()}
    assert by_url[url].suspended and not by_url["https://o2:8935"].suspended
    now[0] += SUSPEND_BASE * 8 + 0.1
    assert not {c.url: c for c in pool.candidates()}[url].suspended, "used again once the suspension ends"
    pool.started(url)
    pool.succeeded(url, 1.0, 2.0)
    record = pool.records[url]
    assert record.consecutive_failures == 0 and record.latency == 0.5
    pool.started(url)
    assert pool.failed(url, "x", forget_info=False) == SUSPEND_BASE, "the penalty restarts after a success"


def test_latency_is_a_moving_average_and_old_failures_fade() -> None:
    now = [0.0]
    pool = _pool(now)
    url = "https://o2:8935"
    for seconds in (1.0, 1.0, 3.0):
        pool.started(url)
        pool.succeeded(url, seconds, 2.0)
    # 0.5, then 0.5, then 0.7 * 0.5 + 0.3 * 1.5 = 0.8: one slow sample moves it, not replaces it.
    assert abs((pool.records[url].latency or 0) - 0.8) < 1e-9
    pool.started(url)
    pool.failed(url, "boom", forget_info=False)
    assert {c.url: c for c in pool.candidates()}[url].failure_rate == 0.25
    now[0] += 61
    assert {c.url: c for c in pool.candidates()}[url].failure_rate == 0.0


def test_exploration_never_promotes_a_full_orchestrator() -> None:
    pool = [cand("best", latency=0.1), cand("full", latency=0.2, in_flight=4, capacity=4)]
    rng = random.Random(3)
    assert all(select(pool, SelectionPolicy(job=JOB, explore=1.0), rng)[0].url == "best" for _ in range(200))


def test_busy_refusal_does_not_suspend() -> None:
    now = [0.0]
    pool = _pool(now)
    url = "https://o1:8935"
    pool.started(url)
    pool.busy(url)
    record = pool.records[url]
    assert record.in_flight == 0 and not record.suspended(now[0]) and record.consecutive_failures == 0


def test_orchestrator_sessions_expire_and_idle_ones_make_room() -> None:
    from streamgw.orchestrator.store import SESSION_IDLE, SESSION_RECLAIM, Sessions

    now = [0.0]
    sessions = Sessions(2, clock=lambda: now[0])
    a = sessions.open(b"\x01" * 20)
    b = sessions.open(b"\x02" * 20)
    assert a and b and sessions.open(b"\x03" * 20) is None, "capped while both are in use"
    assert sessions.open(b"\x03" * 20, ignore_capacity=True) is not None
    sessions.end(next(iter([s for s in (a, b) if s])))
    now[0] += SESSION_RECLAIM + 1
    assert sessions.use(b) is not None  # b is busy again; the extra one idles
    c = sessions.open(b"\x04" * 20)
    assert c is not None, "an idle session made room"
    assert b in sessions and c in sessions
    now[0] += SESSION_IDLE + 1
    assert len(sessions) == 0 and sessions.use(b) is None
