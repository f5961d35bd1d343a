"""What the voice gate's tone and noise check changes: line sounds no longer scored, speech
left as it was, and what it costs.

``PYTHONPATH=. python docs/results/bench_voice_gate.py [--data DIRS] [--seconds 300]
[--out docs/results/bench_voice_gate.json] [--cost-only]`` runs the same calls through the
server's windowing twice, the check off (``VadConfig(max_tone_or_noise=None)``, the gate before it) and
on (the default), scores the speech windows with the shipped model and replays them through
its alert rules (``callmon bench alerts``'s code, clean and over a telephone line):

- **line sounds** (``streamer.tools.line_sounds``: ringback, busy, reorder, DTMF, special
  information, fax and modem tones, noise bursts), ``--seconds`` each as a call: the windows
  scored and the alerts raised;
- **speech**: the benchmark's calls (calm, calm-then-target, upset from the start) of every
  speaker of ``--data``: the windows scored, how many the check turned away, and the alert
  figures. The shipped model trained on these speakers, so its figures here are not the
  speaker-independent ones of the card: they compare the two gates on the same calls;
- **cost**: the gate's time per window over calls' windows in order, as a channel's windower
  calls it, the check off and on.

``--music DIR --out docs/results/bench_voice_gate_music.json`` instead runs every audio file
of DIR (the first ``--seconds``, mono, 16 kHz, −20 dBFS RMS) as a call through both gates,
clean and over a telephone line: what music on hold or a radio behind the caller gets scored
and alerted. The music measured was real instrumental music, Debian's MIDI soundtrack of
OpenTTD rendered with a General MIDI sound font (GPL-2; read from the system, not kept here)::

    apt-get install fluidsynth openttd-openmsx timgm6mb-soundfont
    for f in /usr/share/games/openttd/baseset/openmsx/*.mid; do
      fluidsynth -ni -q -r 16000 -g 0.5 -F "$DIR/$(basename "$f" .mid).wav" \
        /usr/share/sounds/sf2/TimGM6mb.sf2 "$f"; done
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

import numpy as np

from models import load_model
from models.audio import MODEL_RATE_HZ
from streamer.calls import WindowingConfig
from streamer.service import alert_config
from streamer.settings import Settings
from streamer.tools.alert_bench import (
    SyntheticCall,
    bench_session,
    build_calls,
    load_corpora,
    run_alerts,
    score_calls,
    summarise,
    through_line,
)
from streamer.tools.line_sounds import line_sounds
from streamer.windowing import VadConfig, VoiceGate

#: The windows the cost is timed on start 1 s apart.
HOP_SAMPLES = MODEL_RATE_HZ
GATES = {"check off": VadConfig(max_tone_or_noise=None), "check on": VadConfig()}


class CachedModel:
    """The model's scores of each window, computed once for both gates (the check only takes
    windows away, so the second pass finds every window it scores already scored)."""

    def __init__(self, model) -> None:
        self.model = model
        self.scores: dict[bytes, np.ndarray] = {}
        self.windows_run = 0

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        keys = [hashlib.blake2b(w.tobytes(), digest_size=16).digest() for w in batch]
        todo = [i for i, k in enumerate(keys) if k not in self.scores]
        if todo:
            out = self.model.run_windows(batch[todo])
            self.scores.update({keys[i]: p for i, p in zip(todo, out, strict=True)})
            self.windows_run += len(todo)
        return np.stack([self.scores[k] for k in keys])


def line_sound_calls(seconds: float, telephone: bool) -> list[SyntheticCall]:
    rng = np.random.default_rng(0)
    calls = []
    for name, sound in line_sounds(seconds, MODEL_RATE_HZ).items():
        audio, rate = through_line(sound, rng, telephone)
        calls.append(SyntheticCall(name, f"line/{name}", "calm", audio, rate, None))
    return calls


def music_calls(folder: Path, seconds: float, telephone: bool) -> list[SyntheticCall]:
    """Each audio file of ``folder`` as a call: its first ``seconds``, mono, at the model's
    rate, at −20 dBFS RMS, through the line."""
    import soundfile as sf
    import soxr

    rng = np.random.default_rng(0)
    calls = []
    for path in sorted(f for f in folder.iterdir() if f.suffix.lower() in (".wav", ".flac",
                                                                              ".ogg")):
        audio, rate = sf.read(path, dtype="float32", always_2d=True)
        audio = audio[: int(seconds * rate)].mean(axis=1)
        if rate != MODEL_RATE_HZ:
            audio = soxr.resample(audio, rate, MODEL_RATE_HZ)
        audio = np.clip(audio * 0.1 / (np.sqrt(np.mean(audio**2)) + 1e-9), -1, 1)
        audio, line_rate = through_line(audio.astype(np.float32), rng, telephone)
        calls.append(SyntheticCall(path.stem, f"music/{path.stem}", "calm", audio, line_rate,
                                   None))
    if not calls:
        raise SystemExit(f"no .wav, .flac or .ogg files in {folder}")
    return calls


def sound_report(runs: dict) -> dict:
    """Per call and gate: windows, windows scored and alerts raised; alerts per hour."""
    sounds: dict = {}
    for name, r in runs.items():
        for scored, raised in zip(r["scored"], r["alerts"], strict=True):
            entry = sounds.setdefault(scored.call.call_id, {"windows": len(scored.windows)})
            entry[name] = {"scored": sum(sc is not None for _, sc in scored.windows),
                           "alerts": [f"{k} at {at:.0f} s" for k, at, _ in raised.raised]}
    hours = sum(c["windows"] for c in sounds.values()) / 3600
    return {
        "calls": sounds,
        "alerts_per_hour": {name: round(sum(len(s[name]["alerts"]) for s in sounds.values())
                                        / hours, 1) for name in runs},
        "windows_scored": {name: sum(s[name]["scored"] for s in sounds.values())
                           for name in runs},
        "windows": sum(c["windows"] for c in sounds.values()),
        "calls_alerted": {name: sum(bool(s[name]["alerts"]) for s in sounds.values())
                          for name in runs},
    }


def run(calls, predict, labels, alerts, window_s) -> dict:
    out = {}
    for name, vad in GATES.items():
        windowing = WindowingConfig(window_s=window_s, vad=vad)
        scored = score_calls(calls, predict, labels, windowing=windowing)
        speech = {(s.call.call_id, w.index) for s in scored for w, sc in s.windows
                  if sc is not None}
        out[name] = {"windows": sum(len(s.windows) for s in scored), "speech": speech,
                     "scored": scored, "alerts": run_alerts(scored, alerts, windowing)}
    return out


def gate_cost(calls: list[list[np.ndarray]], repeats: int = 3) -> dict:
    """Microseconds per window of VoiceGate.speech_ratio over each call's windows in order,
    as a channel's windower calls it (frames shared with the window before are not measured
    again), the check off and on, each timed in turn; best of ``repeats``."""
    best: dict[str, float] = {}
    count = sum(len(c) for c in calls)
    for _ in range(repeats):
        for name, vad in GATES.items():
            started = time.perf_counter()
            for windows in calls:
                gate = VoiceGate(vad)
                for i, w in enumerate(windows):
                    gate.speech_ratio(w, i * HOP_SAMPLES)
            took = (time.perf_counter() - started) / count * 1e6
            best[name] = min(best.get(name, took), took)
    return {**{f"{k} us_per_window": round(v, 1) for k, v in best.items()},
            "ratio": round(best["check on"] / best["check off"], 2)}


def cost(items, speakers, labels, alerts, window_s) -> dict:
    """The gate's cost (:func:`gate_cost`) on every window of four speakers' calls (score_calls
    keeps no audio)."""
    windows = [[w.samples for w in bench_session(call, alerts, WindowingConfig(window_s=window_s))
                .feed(call.audio[:, None])]
               for call in build_calls(items, speakers[:4], labels, calm_minutes=1.0)]
    return {"calls": len(windows), "windows": sum(map(len, windows)), **gate_cost(windows)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="../shared/data/ravdess,../shared/data/emodb")
    parser.add_argument("--seconds", type=float, default=300.0, help="each line sound's call")
    parser.add_argument("--calm-minutes", type=float, default=4.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="docs/results/bench_voice_gate.json")
    parser.add_argument("--cost-only", action="store_true",
                        help="only time the gate (no model): print the cost, write nothing")
    parser.add_argument("--music", type=Path, default=None, metavar="DIR",
                        help="only run DIR's audio files (music) as calls")
    args = parser.parse_args()

    items = load_corpora(args.data.split(","))
    model = load_model(None, "cpu", threads=args.threads)
    alerts = alert_config(Settings.model_validate({}), model.card.alerts)
    predict = CachedModel(model)
    labels, window_s = model.labels, model.card.window_s
    speakers = sorted({u.speaker for u in items})
    if args.cost_only:
        print(json.dumps(cost(items, speakers, labels, alerts, window_s)))
        return
    if args.music is not None:
        music = {"model": model.card.name, "variant": model.variant, "seconds": args.seconds,
                 "folder": str(args.music)}
        for channel, telephone in (("clean", False), ("telephone", True)):
            calls = music_calls(args.music, args.seconds, telephone)
            music[channel] = sound_report(run(calls, predict, labels, alerts, window_s))
        Path(args.out).write_text(json.dumps(music, indent=2) + "\n")
        print(json.dumps({c: {k: v for k, v in music[c].items() if k != "calls"}
                          for c in ("clean", "telephone")}, indent=2))
        return
    report: dict = {"model": model.card.name, "variant": model.variant, "speakers": speakers,
                    "line_sounds": {}, "speech": {}}
    for channel, telephone in (("clean", False), ("telephone", True)):
        runs = run(line_sound_calls(args.seconds, telephone), predict, labels, alerts, window_s)
        sounds = sound_report(runs)
        report["line_sounds"][channel] = {k: sounds[k] for k in ("calls", "alerts_per_hour")}

        calls = build_calls(items, speakers, labels, calm_minutes=args.calm_minutes,
                            telephone=telephone)
        runs = run(calls, predict, labels, alerts, window_s)
        off, on = runs["check off"], runs["check on"]
        report["speech"][channel] = {
            "calls": len(calls), "windows": off["windows"],
            "scored": {name: len(r["speech"]) for name, r in runs.items()},
            "turned_away": sorted(f"{c} #{i}" for c, i in off["speech"] - on["speech"]),
            "figures": {name: summarise(r["alerts"])["overall"] for name, r in runs.items()},
        }
    report["cost"] = cost(items, speakers, labels, alerts, window_s)
    report["model_windows_run"] = predict.windows_run
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "line_sounds"}
                     | {"line_sounds": {c: v["alerts_per_hour"]
                                        for c, v in report["line_sounds"].items()}},
                     indent=2))


if __name__ == "__main__":
    main()
