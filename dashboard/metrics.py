"""``/metrics``: the streamer node's counters in Prometheus text format."""

from __future__ import annotations

from streamer.metrics import NodeStats, counter


def render_metrics(stats: NodeStats | None, *, live_calls: int, browsers: int = 0,
                   browsers_behind: int = 0) -> str:
    """Prometheus text: live calls across the cluster, this dashboard's live streams to
    browsers, and this node's ``stats`` when the dashboard runs inside ``callmon serve``."""
    lines = counter("callmon_active_calls", "Live calls across all nodes (from Redis).",
                    live_calls, kind="gauge")
    lines += counter("callmon_dashboard_streams", "Browsers following the live stream.",
                     browsers, kind="gauge")
    lines += counter("callmon_dashboard_streams_behind_total",
                     "Live streams ended because their browser fell behind (it reloads).",
                     browsers_behind)
    if stats is not None:
        lines += counter("callmon_node_calls", "Live calls on this node.", stats.live_calls,
                         kind="gauge")
        lines += counter("callmon_windows_total", "Windows cut from call audio.", stats.windows)
        lines += counter("callmon_windows_silent_total", "Windows skipped by the VAD.",
                         stats.silent_windows)
        lines += counter("callmon_windows_scored_total", "Windows scored by the model.",
                         stats.scored)
        lines += counter("callmon_windows_dropped_total",
                         "Windows dropped because inference fell behind.", stats.dropped)
        lines += counter("callmon_alerts_raised_total", "Alerts raised.", stats.alerts_raised)
        lines += counter("callmon_alerts_cleared_total", "Alerts cleared.", stats.alerts_cleared)
        lines += counter("callmon_calls_started_total", "Calls started on this node.",
                         stats.calls_started)
        lines += counter("callmon_redis_connected", "1 while Redis answers.",
                         int(stats.redis_connected), kind="gauge")
        lines += counter("callmon_undelivered_events", "Alerts and call events held for Redis.",
                         stats.undelivered_events, kind="gauge")
        lines += stats.inference_ms.exposition("callmon_inference_batch_ms",
                                               "Model time per batch, milliseconds.")
        lines += stats.batch_sizes.exposition("callmon_inference_batch_size",
                                              "Windows per batch.")
        lines += stats.latency_ms.exposition(
            "callmon_window_latency_ms", "Last sample of a window to its result, milliseconds.")
    return "\n".join(lines) + "\n"
