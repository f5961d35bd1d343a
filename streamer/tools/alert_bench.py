"""``callmon bench alerts``: how trustworthy the alerts are on speakers the model never saw.

Synthetic calls are built from held-out speakers of any manifest corpus:

* **calm calls**: the speaker's neutral, calm and happy clips in random order with short
  pauses, at least ``calm_minutes`` long (clips repeat when the corpus has too few);
* **calm-then-target calls**: a calm stretch, then the speaker's angry clips (a
  frustration target) or sad or fearful clips (distress targets);
* **calls upset from the first word**: the target clips from 0 s, nothing calm before them
  (kept apart as ``<emotion>_from_start``).

Each call goes through the server's own path, offline and faster than real time: the
streaming windower with its resampler and voice gate (:class:`streamer.calls.CallSession`),
the model on every speech window, then the alert engine in window order through
``CallSession.decide`` and ``close_alerts``, exactly as ``callmon serve`` decides.

Reported, per kind, speaker, corpus and channel (clean or telephone): false alerts per
hour of calm speech (any raise during calm audio, in calm calls and in the calm part of
target calls), and for each target call whether the target kind was alerted within the
target's deadline, and how long after the onset.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from models.corpora import Utterance, corpus_name, discover, load_audio, seen_speakers, speaker_id
from models.labels import map_to_label_set
from streamer.alerts import KINDS, AlertConfig, alert_config_dict
from streamer.calls import CallSession, ResultOrder, WindowingConfig
from streamer.protocol import StreamStart
from streamer.schema import Alert
from streamer.tools.intervals import interval_line, intervals
from streamer.windowing import MODEL_RATE_HZ, Window

log = logging.getLogger(__name__)

PredictFn = Callable[[np.ndarray], np.ndarray]

CALM_EMOTIONS = ("neutral", "happy")  # calm maps onto neutral in the five-class set
#: Target emotion → the alert kind it should raise, and the deadline after its onset.
TARGETS = {"angry": ("frustration", 10.0), "sad": ("distress", 15.0),
           "fearful": ("distress", 15.0)}
#: Figures are kept per target: calm-then-target calls under the emotion's name, calls that
#: are upset from the first word (no calm part to learn a caller baseline from) as
#: ``<emotion>_from_start``.
FROM_START = "_from_start"
TARGET_KEYS = (*TARGETS, *(e + FROM_START for e in TARGETS))


NOISE_DBFS = -65.0  # the line's noise floor between and under the clips
TELEPHONE_RATE_HZ = 8_000


def target_kind(key: str) -> str:
    """The alert kind a target key (:data:`TARGET_KEYS`) should raise."""
    return TARGETS[key.removesuffix(FROM_START)][0]


class AlertBenchError(ValueError):
    """The corpus or speaker selection cannot give an honest benchmark."""


@dataclass(frozen=True, slots=True)
class SyntheticCall:
    """One call's audio (at ``rate_hz``) and where its target segment starts."""

    call_id: str
    speaker: str
    kind: str  # "calm" or the target emotion
    audio: np.ndarray
    rate_hz: int
    onset_s: float | None  # None for calm calls

    @property
    def seconds(self) -> float:
        return self.audio.shape[0] / self.rate_hz

    @property
    def calm_seconds(self) -> float:
        return self.seconds if self.onset_s is None else self.onset_s

    @property
    def target(self) -> str | None:
        """The key its figures are kept under (:data:`TARGET_KEYS`); None for calm calls."""
        if self.onset_s is None:
            return None
        return self.kind + (FROM_START if self.onset_s == 0.0 else "")


@dataclass(slots=True)
class ScoredCall:
    """A call's windows in order with their scores (``None`` for silent windows)."""

    call: SyntheticCall
    windows: list[tuple[Window, dict[str, float] | None]] = field(default_factory=list)


# -- building calls ------------------------------------------------------------------------


def load_corpora(roots: Sequence[str | Path]) -> list[Utterance]:
    """Utterances of every corpus, with speakers always named ``corpus/speaker``."""
    items: list[Utterance] = []
    for root in roots:
        name = corpus_name(root)
        items += [replace(u, speaker=speaker_id(name, u.speaker)) for u in discover(root)]
    return items


def _pause(rng: np.random.Generator, rate: int) -> np.ndarray:
    return np.zeros(int(rng.uniform(0.3, 1.0) * rate), dtype=np.float32)


def _join(clips: list[np.ndarray], rng: np.random.Generator, rate: int) -> np.ndarray:
    parts: list[np.ndarray] = []
    for clip in clips:
        parts += [clip, _pause(rng, rate)]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)


def _calm_stretch(clips: list[np.ndarray], seconds: float, rng: np.random.Generator) -> np.ndarray:
    """Calm clips in random order, each pass reshuffled, until ``seconds`` are filled."""
    out: list[np.ndarray] = []
    total = 0.0
    while total < seconds:
        for i in rng.permutation(len(clips)):
            out.append(clips[i])
            total += (len(clips[i]) + 0.65 * MODEL_RATE_HZ) / MODEL_RATE_HZ
            if total >= seconds:
                break
    return _join(out, rng, MODEL_RATE_HZ)


def through_line(audio: np.ndarray, rng: np.random.Generator, telephone: bool
                 ) -> tuple[np.ndarray, int]:
    """A call's audio as the server receives it: the line's noise floor added, and through a
    telephone channel 8 kHz μ-law audio. Returns (audio, its rate)."""
    noise = np.asarray(rng.standard_normal(audio.shape[0]), np.float32) * 10 ** (NOISE_DBFS / 20)
    audio = (audio + noise).astype(np.float32)
    if not telephone:
        return audio, MODEL_RATE_HZ
    from models.audio import telephone_line

    return telephone_line(audio), TELEPHONE_RATE_HZ


def build_calls(items: Sequence[Utterance], speakers: Sequence[str], labels: Sequence[str], *,
                calm_minutes: float = 4.0, prefix_s: float = 30.0, target_s: float = 20.0,
                telephone: bool = False, seed: int = 0, calm_then_target: bool = True,
                from_start: bool = True) -> list[SyntheticCall]:
    """Per speaker: one calm call and one calm-then-target call per target emotion
    (``calm_then_target``), and one call upset from the first word per target emotion
    (``from_start``: ``target_s`` of the target, onset at 0 s). The from-start calls draw
    on their own random stream, so the other calls are the same with or without them.

    Raises:
        AlertBenchError: a speaker has no calm clips (neutral, calm or happy).
    """
    calls: list[SyntheticCall] = []
    for speaker in speakers:
        rng = np.random.default_rng([seed, *speaker.encode()])
        mine = [u for u in items if u.speaker == speaker]
        by_emotion: dict[str, list[Utterance]] = {}
        for u in mine:
            mapped = map_to_label_set(u.emotion, tuple(labels))
            if mapped is not None:
                by_emotion.setdefault(mapped, []).append(u)
        calm_items = [u for e in CALM_EMOTIONS for u in by_emotion.get(e, [])]
        if not calm_items:
            raise AlertBenchError(
                f"speaker {speaker} has no calm clips (neutral, calm or happy): a calm call "
                "cannot be built")
        calm = [load_audio(u.path) for u in calm_items]
        tag = speaker.replace("/", "-")
        if from_start:
            start_rng = np.random.default_rng([seed, *speaker.encode(), 1])
            for emotion in TARGETS:
                target_items = by_emotion.get(emotion, [])
                if target_items:
                    order = start_rng.permutation(len(target_items))
                    target = _calm_stretch([load_audio(target_items[i].path) for i in order],
                                           target_s, start_rng)
                    audio, rate = through_line(target, start_rng, telephone)
                    calls.append(SyntheticCall(f"{tag}-{emotion}-from-start", speaker, emotion,
                                               audio, rate, 0.0))
        if not calm_then_target:
            continue
        audio, rate = through_line(_calm_stretch(calm, 60 * calm_minutes, rng), rng, telephone)
        calls.append(SyntheticCall(f"{tag}-calm", speaker, "calm", audio, rate, None))
        for emotion in TARGETS:
            target_items = by_emotion.get(emotion, [])
            if not target_items:
                log.warning("speaker %s has no %s clips: no %s call", speaker, emotion, emotion)
                continue
            prefix = _calm_stretch(calm, prefix_s, rng)
            order = rng.permutation(len(target_items))
            target = _calm_stretch([load_audio(target_items[i].path) for i in order], target_s,
                                   rng)
            audio, rate = through_line(np.concatenate([prefix, target]), rng, telephone)
            calls.append(SyntheticCall(f"{tag}-{emotion}", speaker, emotion, audio, rate,
                                       len(prefix) / MODEL_RATE_HZ))
    return calls


# -- running them through the server's path -------------------------------------------------


def bench_session(call: SyntheticCall, alerts: AlertConfig, windowing: WindowingConfig
                  ) -> CallSession:
    """The server's call state for a benchmark call (one customer channel): feeding it
    windows the audio as the server does, and ``decide`` runs the alert engine."""
    start = StreamStart(call_id=call.call_id, sample_rate=call.rate_hz, encoding="f32le",
                        channels=1, roles=("customer",))
    return CallSession(start, protocol="bench", windowing=windowing, alerts=alerts,
                       send_results=False)


def score_calls(calls: Sequence[SyntheticCall], predict: PredictFn, labels: Sequence[str], *,
                windowing: WindowingConfig | None = None, batch_size: int = 32,
                chunk_s: float = 0.5) -> list[ScoredCall]:
    """Window every call as the server does and score its speech windows with ``predict``."""
    windowing = windowing or WindowingConfig()
    scored: list[ScoredCall] = []
    for call in calls:
        session = bench_session(call, AlertConfig(), windowing)
        chunk = int(chunk_s * call.rate_hz)
        windows: list[Window] = []
        for offset in range(0, call.audio.shape[0], chunk):
            windows += session.feed(call.audio[offset : offset + chunk, None])
        windows += session.finish()
        speech = [w for w in windows if w.speech]
        probs: dict[int, np.ndarray] = {}
        for i in range(0, len(speech), batch_size):
            batch = speech[i : i + batch_size]
            out = predict(np.stack([w.samples for w in batch]))
            probs.update({w.index: p for w, p in zip(batch, out, strict=True)})
        result = ScoredCall(call)
        for w in windows:
            scores = None
            if w.speech:
                scores = {k: round(float(v), 5) for k, v in zip(labels, probs[w.index],
                                                                strict=True)}
            result.windows.append((replace(w, samples=np.zeros(0, np.float32)), scores))
        scored.append(result)
    return scored


@dataclass(slots=True)
class CallAlerts:
    call: SyntheticCall
    raised: list[tuple[str, float, float | None]]  # (kind, raised at, cleared at)


def pair_alerts(alerts: Sequence[Alert]) -> list[tuple[str, float, float | None]]:
    """A call's raised/cleared messages → ``(kind, raised at, cleared at)``, by raise time."""
    open_: dict[str, tuple[str, float]] = {}
    out: list[tuple[str, float, float | None]] = []
    for a in alerts:
        if a.state == "raised":
            open_[a.id] = (a.kind, a.call_time_s)
        else:
            kind, at = open_.pop(a.raised_id or "")
            out.append((kind, at, a.call_time_s))
    out += [(kind, at, None) for kind, at in open_.values()]
    return sorted(out, key=lambda r: r[1])


def run_alerts(scored: Sequence[ScoredCall], alerts: AlertConfig,
               windowing: WindowingConfig | None = None) -> list[CallAlerts]:
    """Replay scored windows through the alert engine in window order, as the monitor does."""
    windowing = windowing or WindowingConfig()
    out = []
    for sc in scored:
        session = bench_session(sc.call, alerts, windowing)
        order = ResultOrder()
        messages: list[Alert] = []
        for window, scores in sc.windows:
            for w, s in order.put(window, scores):
                messages += session.decide(w, s)[1]
        last = max((win.index for win, _ in sc.windows), default=0)
        # The call ends: what is still active is cleared, as in serve.
        messages += session.alerts["customer"].close(window_index=last, end_s=sc.call.seconds)
        out.append(CallAlerts(sc.call, pair_alerts(messages)))
    return out


# -- figures --------------------------------------------------------------------------------


def time_to_alert(raised: Sequence[tuple[str, float, float | None]], kind: str,
                  onset: float) -> float | None:
    """Seconds from ``onset`` until an alert of ``kind`` is active (0 if one already is),
    or ``None`` if none ever is. ``raised``: ``(kind, raised at, cleared at or None)``."""
    hits = [max(0.0, at - onset) for k, at, cleared in raised
            if k == kind and (cleared is None or cleared > onset)]
    return min(hits) if hits else None


@dataclass(slots=True)
class Tally:
    """What :func:`summarise` counts, additive: the sum of two tallies is the tally of
    their calls together (the threshold search adds them up per speaker and fold).

    ``delays`` holds, per target key (:data:`TARGET_KEYS`), each target call's time to
    alert (None: never alerted).
    """

    calm_s: float = 0.0
    false: dict[str, int] = field(default_factory=lambda: {k: 0 for k in KINDS})
    alerted_s: dict[str, float] = field(default_factory=lambda: {k: 0.0 for k in KINDS})
    delays: dict[str, list[float | None]] = field(
        default_factory=lambda: {e: [] for e in TARGET_KEYS})
    active_at_onset: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TARGET_KEYS, 0))

    @classmethod
    def of(cls, results: Sequence[CallAlerts]) -> Tally:
        t = cls()
        for r in results:
            limit = r.call.calm_seconds
            t.calm_s += limit
            for kind, at, cleared in r.raised:
                if at <= limit:
                    t.false[kind] += 1
                    t.alerted_s[kind] += min(limit, r.call.seconds if cleared is None else cleared) - at
            if r.call.onset_s is None:
                continue
            kind = TARGETS[r.call.kind][0]
            onset = r.call.onset_s
            key = r.call.target or r.call.kind
            # An alert of the right kind active at the onset, or raised after it.
            t.delays[key].append(time_to_alert(r.raised, kind, onset))
            # A false alert still active at the onset covers the target: counted as detected
            # at 0 s, and counted here so that nobody mistakes it for a fast detection.
            t.active_at_onset[key] += any(
                k == kind and at <= onset and (cleared is None or cleared > onset)
                for k, at, cleared in r.raised)
        return t

    def add(self, other: Tally) -> Tally:
        self.calm_s += other.calm_s
        for k in KINDS:
            self.false[k] += other.false[k]
            self.alerted_s[k] += other.alerted_s[k]
        for e in TARGET_KEYS:
            self.delays[e] += other.delays[e]
            self.active_at_onset[e] += other.active_at_onset[e]
        return self

    def in_time(self, key: str) -> list[float]:
        """Times to alert of the ``key`` targets alerted within their deadline."""
        deadline = TARGETS[key.removesuffix(FROM_START)][1]
        return [d for d in self.delays[key] if d is not None and d <= deadline]

    def figures(self) -> dict:
        """The benchmark's figures (one block of :func:`summarise`)."""
        hours = self.calm_s / 3600
        out: dict = {
            "calm_hours": round(hours, 3),
            "false_alerts": dict(self.false),
            "false_alerts_per_hour": {k: round(v / hours, 2) if hours else None
                                      for k, v in self.false.items()},
            # How much of the calm speech a supervisor saw under a (false) alert.
            "calm_time_alerted": {k: round(v / self.calm_s, 4) if self.calm_s else None
                                  for k, v in self.alerted_s.items()},
        }
        for key, delays in self.delays.items():
            kind, deadline = TARGETS[key.removesuffix(FROM_START)]
            hit = self.in_time(key)
            seen = [d for d in delays if d is not None]
            out[key] = {
                "alert": kind, "deadline_s": deadline, "calls": len(delays),
                "detected_within_deadline": len(hit),
                "detection_rate": round(len(hit) / len(delays), 3) if delays else None,
                "median_time_to_alert_s": round(float(np.median(seen)), 1) if seen else None,
                "max_time_to_alert_s": round(float(np.max(seen)), 1) if seen else None,
                "missed": len(delays) - len(seen),
                "already_active_at_onset": self.active_at_onset[key],
            }
        return out


def summarise(results: Sequence[CallAlerts]) -> dict:
    """False alerts per hour of calm speech, detection and time to alert, overall and per
    speaker and corpus."""

    def block(rs: Sequence[CallAlerts]) -> dict:
        return Tally.of(rs).figures()

    speakers = sorted({r.call.speaker for r in results})
    corpora = sorted({s.split("/")[0] for s in speakers})
    return {
        "overall": block(results),
        "per_corpus": {c: block([r for r in results if r.call.speaker.startswith(c + "/")])
                       for c in corpora},
        "per_speaker": {s: block([r for r in results if r.call.speaker == s]) for s in speakers},
    }


def trained_corpora(card) -> set[str]:
    data = ((card.training or {}).get("config") or {}).get("data", "")
    return {corpus_name(r) for r in str(data).split(",") if r.strip()}


def held_out_speakers(items: Sequence[Utterance], card, requested: Sequence[str] | None = None
                      ) -> list[str]:
    """The speakers to benchmark: ``requested`` (checked), or every speaker of the given
    corpora that the model never trained or validated on.

    Raises:
        AlertBenchError: a requested speaker was seen in training, is not in the data, or a
            corpus has no held-out speaker.
    """
    seen = seen_speakers(card.training)
    available = sorted({u.speaker for u in items})
    if requested:
        unknown = [s for s in requested if s not in available]
        if unknown:
            raise AlertBenchError(f"speakers {unknown} are not in the data; it has {available}")
        leaked = [s for s in requested if s in seen]
        if leaked:
            raise AlertBenchError(
                f"speakers {leaked} were in the model's training or validation set: their "
                "figures would not be speaker-independent")
        return list(requested)
    chosen = [s for s in available if s not in seen]
    for corpus in sorted({s.split("/")[0] for s in available}):
        if not any(s.startswith(corpus + "/") for s in chosen):
            raise AlertBenchError(
                f"corpus {corpus!r} has no speaker the model did not train on: a benchmark on "
                "it would measure memory, not unfamiliar voices")
    return chosen


def bench_alerts(*, items: Sequence[Utterance], model, alerts: AlertConfig,
                 speakers: Sequence[str] | None = None, telephone: bool = False,
                 calm_minutes: float = 4.0, seed: int = 0) -> dict:
    """Build calls of ``items`` (:func:`load_corpora`), score them with ``model`` and report
    the alert figures."""
    chosen = held_out_speakers(items, model.card, speakers)
    labels = model.labels
    started = time.perf_counter()
    calls = build_calls(items, chosen, labels, calm_minutes=calm_minutes, telephone=telephone,
                        seed=seed)
    windowing = WindowingConfig(window_s=model.card.window_s)
    scored = score_calls(calls, model.run_windows, labels, windowing=windowing)
    results = run_alerts(scored, alerts, windowing)
    report = summarise(results)
    report.update({
        "intervals": intervals(report["per_speaker"]),
        "model": {"name": model.card.name, "backbone": model.card.backbone,
                  "variant": getattr(model, "variant", None),
                  "temperature": model.card.temperature},
        "alert_config": alert_config_dict(alerts),
        "channel": "telephone (8 kHz μ-law)" if telephone else "clean (16 kHz)",
        "speakers": chosen,
        "calls": [{"call_id": r.call.call_id, "speaker": r.call.speaker, "kind": r.call.kind,
                   "seconds": round(r.call.seconds, 1), "onset_s": r.call.onset_s and
                   round(r.call.onset_s, 1),
                   "alerts": [{"kind": k, "raised_s": a, "cleared_s": c} for k, a, c in r.raised]}
                  for r in results],
        "seconds": round(time.perf_counter() - started, 1),
    })
    return report


def format_report(report: dict) -> str:
    """A table a person reads: one row per corpus and speaker, then overall."""
    head = ("| speakers | calm h | frustration FA/h | distress FA/h | angry ≤10 s | sad ≤15 s | "
            "fearful ≤15 s | median s to alert (angry/sad/fearful) | from the first word: "
            "angry/sad/fearful in time |")
    lines = [f"{report['channel']}, model {report['model']['backbone']} "
             f"({report['model']['variant']}), T={report['model']['temperature']}", "",
             head, "|---" * 9 + "|"]

    def row(name: str, b: dict) -> str:
        def det(e: str) -> str:
            t = b[e]
            return f"{t['detected_within_deadline']}/{t['calls']}" if t["calls"] else "–"

        med = "/".join("–" if b[e]["median_time_to_alert_s"] is None
                       else f"{b[e]['median_time_to_alert_s']:.0f}" for e in TARGETS)
        fa = b["false_alerts_per_hour"]
        start = ", ".join(det(e + FROM_START) for e in TARGETS)
        return (f"| {name} | {b['calm_hours']:.2f} | {fa['frustration']} | {fa['distress']} | "
                f"{det('angry')} | {det('sad')} | {det('fearful')} | {med} | {start} |")

    for name, b in report["per_speaker"].items():
        lines.append(row(name, b))
    for name, b in report["per_corpus"].items():
        lines.append(row(f"**{name}**", b))
    lines.append(row("**all**", report["overall"]))
    if "intervals" in report:
        lines += ["", interval_line(report["intervals"]) + "."]
    return "\n".join(lines)


def plot_report(report: dict, path: Path) -> None:
    """False alerts per hour per speaker (bars) and time to alert per target (dots)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    speakers = list(report["per_speaker"])
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    x = np.arange(len(speakers))
    for offset, kind, colour in ((-0.2, "frustration", "#c0392b"), (0.2, "distress", "#7d3c98")):
        ax1.bar(x + offset, [report["per_speaker"][s]["false_alerts_per_hour"][kind] or 0
                             for s in speakers], 0.4, label=kind, color=colour)
    ax1.axhline(1.0, color="grey", linestyle="--", linewidth=1, label="target ≤ 1 / h")
    ax1.set_xticks(x, speakers, rotation=60, ha="right", fontsize=8)
    ax1.set_ylabel("false alerts per hour of calm speech")
    ax1.legend(fontsize=8)
    for i, emotion in enumerate(TARGETS):
        kind, deadline = TARGETS[emotion]
        delays = [time_to_alert([(a["kind"], a["raised_s"], a["cleared_s"]) for a in c["alerts"]],
                                kind, c["onset_s"])
                  for c in report["calls"] if c["kind"] == emotion and c["onset_s"]]
        shown = [d if d is not None else deadline * 2.2 for d in delays]
        jitter = np.linspace(-0.15, 0.15, len(shown))
        ax2.scatter(i + jitter, shown,
                    c=["#1e8449" if d is not None and d <= deadline else "#c0392b" for d in delays],
                    s=18)
        ax2.hlines(deadline, i - 0.3, i + 0.3, colors="grey", linestyles="--", linewidth=1)
    ax2.set_xticks(range(len(TARGETS)), [f"{e}\n→ {TARGETS[e][0]}" for e in TARGETS])
    ax2.set_ylabel("seconds from onset to alert (top row: missed)")
    fig.suptitle(f"callmon bench alerts — {report['channel']}, "
                 f"{len(speakers)} held-out speakers")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(report: dict, out: Path) -> list[Path]:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    png = out.with_suffix(".png")
    plot_report(report, png)
    return [out, png]
