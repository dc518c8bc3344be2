"""Prometheus metrics of one gateway process (its own registry: no module-level state)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from streamgw.gateway.dispatcher import DispatchObserver, Outcome
from streamgw.gateway.publishers import SegmentObserver
from streamgw.segment import Segment


class Metrics(SegmentObserver, DispatchObserver):
    """The gateway's metrics; ``render`` gives the text exposition format."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.segments_out = Counter(
            "streamgw_segments", "Segments produced", ["rendition"], registry=self.registry
        )
        self.segment_seconds = Counter(
            "streamgw_segment_media_seconds", "Seconds of media cut into segments", ["rendition"],
            registry=self.registry,
        )
        self.segmenter_latency = Histogram(
            "streamgw_segmenter_latency_seconds",
            "Time from the arrival of the bytes that close a segment to the segment being emitted",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
            registry=self.registry,
        )
        self.streams = Gauge("streamgw_streams", "Streams live or reconnecting", registry=self.registry)
        self.rtmp_connections = Gauge(
            "streamgw_rtmp_connections", "Open RTMP connections", registry=self.registry
        )
        self.rtmp_protocol_errors = Gauge(
            "streamgw_rtmp_protocol_errors", "RTMP connections closed for protocol errors (total)",
            registry=self.registry,
        )

        self.orchestrator_attempts = Counter(
            "streamgw_orchestrator_attempts",
            "Segment attempts per orchestrator and outcome (ok, failed, busy, rejected: the segment's fault, "
            "abandoned: cancelled)",
            ["orchestrator", "outcome"], registry=self.registry,
        )
        self.orchestrator_busy = Counter(
            "streamgw_orchestrator_busy_refusals", "Segments an orchestrator refused for lack of capacity",
            ["orchestrator"], registry=self.registry,
        )
        self.orchestrator_seconds = Histogram(
            "streamgw_orchestrator_round_trip_seconds", "Upload, transcode and download time per attempt",
            ["orchestrator"], buckets=(0.1, 0.25, 0.5, 1, 2, 4, 8, 16), registry=self.registry,
        )
        self.renditions_latency = Histogram(
            "streamgw_renditions_latency_seconds",
            "Time from a source segment being cut to its renditions being published (or given up)",
            ["outcome"], buckets=(0.1, 0.25, 0.5, 1, 2, 4, 8, 16), registry=self.registry,
        )

    def on_attempt(self, orchestrator: str, outcome: Outcome, seconds: float) -> None:
        self.orchestrator_attempts.labels(orchestrator, outcome).inc()
        if outcome == "busy":
            self.orchestrator_busy.labels(orchestrator).inc()
        elif outcome == "ok":
            self.orchestrator_seconds.labels(orchestrator).observe(seconds)

    def on_transcoded(self, ok: bool, seconds: float) -> None:
        self.renditions_latency.labels("published" if ok else "lost").observe(seconds)

    def on_segment(self, segment: Segment, latency: float) -> None:
        self.segments_out.labels(segment.rendition).inc()
        self.segment_seconds.labels(segment.rendition).inc(segment.duration_seconds)
        self.segmenter_latency.observe(latency)

    def bind(self, streams: Callable[[], int], connections: Callable[[], int], errors: Callable[[], int],
             counts: Callable[[], Mapping[str, Mapping[str, int]]] | None = None) -> None:
        """Read gauges, and the counters that the hot path keeps as plain ints, from the live
        objects at scrape time. ``counts``: ``{"bytes_in": {"": n}, "hub_dropped": {subscriber: n},
        "segmenter": {what: n}, "http_front": {what: n}}``."""
        self.streams.set_function(streams)
        self.rtmp_connections.set_function(connections)
        self.rtmp_protocol_errors.set_function(errors)
        if counts is not None:
            self.registry.register(_ScrapedCounters(counts))

    def bind_payments(self, snapshot: Callable[[], Mapping[str, Any]]) -> None:
        """Export the payments view (``SenderService.snapshot``) at scrape time."""
        self.registry.register(_PaymentMetrics(snapshot))

    def render(self) -> bytes:
        """The text exposition of every metric."""
        return generate_latest(self.registry)


class _ScrapedCounters(Collector):
    """Counters the gateway keeps as plain ints (no metric call per RTMP read), read when scraped."""

    _FAMILIES = {
        "bytes_in": ("streamgw_ingest_bytes", "Media bytes received from publishers", None),
        "hub_dropped": ("streamgw_hub_dropped_events",
                        "Segments and stream events a subscriber fell too far behind to get (oldest dropped)",
                        "subscriber"),
        "segmenter": ("streamgw_segmenter_events",
                      "What segmenters fixed or left out of what publishers sent: retimed_packets (stamped no "
                      "later than the one before), dropped_packets (went back past it), timestamp_resets, "
                      "recovery_cuts (segments started at a keyframe that is not an IDR)", "what"),
        "http_front": ("streamgw_http_front_events",
                       "HTTP/1.1 requests for media playlists and segments answered in front of uvicorn "
                       "(answered), and connections handed to uvicorn at another request (handed_over)", "what"),
    }

    def __init__(self, counts: Callable[[], Mapping[str, Mapping[str, int]]]) -> None:
        self._counts = counts

    def collect(self) -> Iterator[Metric]:
        counts = self._counts()
        for key, (name, doc, label) in self._FAMILIES.items():
            family = CounterMetricFamily(name, doc, labels=[label] if label else None)
            for value_label, value in sorted(counts.get(key, {}).items()):
                family.add_metric([value_label] if label else [], value)
            yield family


class _PaymentMetrics(Collector):
    """The gateway's payments, from ``SenderService.snapshot()`` (wei as floats: Prometheus has no big ints)."""

    def __init__(self, snapshot: Callable[[], Mapping[str, Any]]) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        snap = self._snapshot()
        for key, doc in (("deposit", "The gateway's deposit in the TicketBroker"),
                         ("reserve", "The gateway's reserve in the TicketBroker")):
            gauge = GaugeMetricFamily(f"streamgw_payment_{key}_wei", doc)
            gauge.add_metric([], float(snap[key]))
            yield gauge
        for key, doc in (("tickets_sent", "Tickets sent to orchestrators"),
                         ("payments", "Requests paid for"), ("refused", "Paid requests refused (credit lost)")):
            counter = CounterMetricFamily(f"streamgw_payment_{key}", doc)
            counter.add_metric([], float(snap[key]))
            yield counter
        ev = CounterMetricFamily("streamgw_payment_ev_sent_wei", "Expected value of the tickets sent")
        ev.add_metric([], float(snap["ev_sent"]))
        yield ev
        balance = GaugeMetricFamily("streamgw_payment_balance_wei",
                                    "Credit the gateway believes each orchestrator holds for it",
                                    labels=["orchestrator"])
        for url, value in sorted(snap["balances"].items()):
            balance.add_metric([url], float(value))
        yield balance
        spend = CounterMetricFamily("streamgw_payment_spend_wei", "Fees paid per stream", labels=["stream"])
        for stream, value in sorted(snap["spend_by_stream"].items()):
            spend.add_metric([stream], float(value))
        yield spend
