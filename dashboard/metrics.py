"""``/metrics``: the streamer node's counters in Prometheus text format."""

from __future__ import annotations

from streamer.metrics import counter


def render_metrics(service, *, live_calls: int) -> str:
    lines = counter("callmon_active_calls", "Live calls across all nodes (from Redis).",
                    live_calls, kind="gauge")
    if service is not None and service.monitor is not None:
        m, s, p = service.monitor.stats, service.scheduler.stats, service.publisher
        lines += counter("callmon_node_calls", "Live calls on this node.", len(service.monitor.calls),
                         kind="gauge")
        lines += counter("callmon_windows_total", "Windows cut from call audio.", m.windows)
        lines += counter("callmon_windows_silent_total", "Windows skipped by the VAD.",
                         m.silent_windows)
        lines += counter("callmon_windows_scored_total", "Windows scored by the model.", s.scored)
        lines += counter("callmon_windows_dropped_total",
                         "Windows dropped because inference fell behind.", s.dropped)
        lines += counter("callmon_alerts_raised_total", "Alerts raised.", m.alerts_raised)
        lines += counter("callmon_alerts_cleared_total", "Alerts cleared.", m.alerts_cleared)
        lines += counter("callmon_calls_started_total", "Calls started on this node.",
                         m.calls_started)
        lines += counter("callmon_redis_connected", "1 while Redis answers.", int(p.connected),
                         kind="gauge")
        lines += counter("callmon_undelivered_events", "Alerts and call events held for Redis.",
                         p.undelivered, kind="gauge")
        lines += s.inference_ms.exposition("callmon_inference_batch_ms",
                                           "Model time per batch, milliseconds.")
        lines += s.batch_sizes.exposition("callmon_inference_batch_size", "Windows per batch.")
        lines += m.latency_ms.exposition(
            "callmon_window_latency_ms", "Last sample of a window to its result, milliseconds.")
    return "\n".join(lines) + "\n"
