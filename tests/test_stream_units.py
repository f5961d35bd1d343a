"""Pure units of the streamer: parsers, ring buffer, windowing, VAD, alert rules, scheduler."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.audio import telephone_channel
from streamer.alerts import AlertConfig, AlertRule, RoleAlerts
from streamer.calls import CallSession, ResultOrder, WindowingConfig
from streamer.ingest.config import TWILIO_TRACKS
from streamer.ingest.native import parse_start
from streamer.ingest.twilio import parse_twilio_media, parse_twilio_start
from streamer.protocol import (
    CLOSE_POLICY,
    CLOSE_TOO_BIG,
    CLOSE_UNSUPPORTED,
    ProtocolError,
    StreamStart,
    decode_frame,
    decode_samples,
    parse_json_object,
)
from streamer.scheduler import InferenceScheduler
from streamer.tools.line_sounds import line_sounds
from streamer.windowing import (
    ChannelWindower,
    RingBuffer,
    VadConfig,
    VoiceGate,
    Window,
    _verdict,
    percentile,
)

GOOD_START = {"type": "start", "call_id": "c-1", "sample_rate": 8000, "encoding": "mulaw",
              "channels": 2, "roles": ["customer", "agent"], "metadata": {"agent": "ann"}}


def test_parse_start_accepts_a_good_message() -> None:
    start = parse_start(GOOD_START)
    assert start.call_id == "c-1" and start.roles == ("customer", "agent")
    assert start.frame_bytes == 2 and start.metadata == {"agent": "ann"}
    mono = parse_start({"type": "start", "call_id": "x", "sample_rate": 16000})
    assert mono.encoding == "pcm_s16le" and mono.roles == ("customer",)


@pytest.mark.parametrize(
    ("change", "code", "close"),
    [
        ({"type": "hello"}, "expected_start", CLOSE_POLICY),
        ({"call_id": ""}, "bad_call_id", CLOSE_POLICY),
        ({"call_id": "a b"}, "bad_call_id", CLOSE_POLICY),
        ({"encoding": "opus"}, "unsupported_encoding", CLOSE_UNSUPPORTED),
        ({"sample_rate": 7000}, "unsupported_sample_rate", CLOSE_UNSUPPORTED),
        ({"sample_rate": "8000"}, "unsupported_sample_rate", CLOSE_UNSUPPORTED),
        ({"sample_rate": 16000}, "unsupported_sample_rate", CLOSE_UNSUPPORTED),  # μ-law at 16k
        ({"channels": 3}, "unsupported_channels", CLOSE_UNSUPPORTED),
        ({"roles": ["customer", "customer"]}, "bad_roles", CLOSE_POLICY),
        ({"roles": ["customer"]}, "bad_roles", CLOSE_POLICY),
        ({"metadata": "x"}, "bad_metadata", CLOSE_POLICY),
        ({"metadata": {"k": "v" * 5000}}, "bad_metadata", CLOSE_POLICY),
    ],
)
def test_parse_start_refusals(change: dict, code: str, close: int) -> None:
    with pytest.raises(ProtocolError) as info:
        parse_start({**GOOD_START, **change})
    assert info.value.code == code and info.value.close_code == close


@given(st.one_of(st.text(max_size=200), st.binary(max_size=200)))
def test_json_parser_never_crashes(raw) -> None:
    try:
        data = parse_json_object(raw)
    except ProtocolError as exc:
        assert exc.code == "bad_json"
    else:
        assert isinstance(data, dict)


@given(st.dictionaries(st.sampled_from(["type", "call_id", "sample_rate", "encoding",
                                        "channels", "roles", "metadata"]),
                       st.one_of(st.none(), st.integers(), st.text(max_size=20), st.booleans(),
                                 st.lists(st.text(max_size=10), max_size=3),
                                 st.dictionaries(st.text(max_size=5), st.integers(), max_size=3))))
def test_start_parser_rejects_or_returns_valid(data: dict) -> None:
    try:
        start = parse_start(data)
    except ProtocolError as exc:
        assert exc.close_code in (CLOSE_POLICY, CLOSE_UNSUPPORTED)
    else:
        assert start.channels in (1, 2) and len(start.roles) == start.channels


@settings(max_examples=200)
@given(st.binary(max_size=64), st.sampled_from(["pcm_s16le", "f32le", "mulaw", "alaw"]),
       st.sampled_from([1, 2]))
def test_frame_decoder_never_crashes(data: bytes, encoding: str, channels: int) -> None:
    rate = 8000 if encoding in ("mulaw", "alaw") else 16000
    start = parse_start({"type": "start", "call_id": "f", "sample_rate": rate,
                         "encoding": encoding, "channels": channels})
    try:
        frames = decode_frame(data, start)
    except ProtocolError as exc:
        assert exc.code in ("partial_frame", "bad_samples")
    else:
        assert frames.shape == (len(data) // start.frame_bytes, channels)
        assert np.isfinite(frames).all() and np.abs(frames).max(initial=0) <= 1.0


@settings(max_examples=200)
@given(st.binary(max_size=400).filter(lambda b: len(b) % 2 == 0),
       st.sampled_from(["pcm_s16le", "mulaw", "alaw"]))
def test_frame_decoder_is_each_int16_sample_over_32768(data: bytes, encoding: str) -> None:
    """The decoder scales in one step (a product, a float32 table); every sample is the same
    float as the G.711 or PCM int16 sample cast to float32 and divided by 32768."""
    from models.audio import decode_alaw, decode_mulaw

    ints = {"pcm_s16le": lambda b: np.frombuffer(b, "<i2"), "mulaw": decode_mulaw,
            "alaw": decode_alaw}[encoding](data)
    decoded = decode_samples(data, encoding)
    assert decoded.dtype == np.float32
    assert np.array_equal(decoded[:, 0], ints.astype(np.float32) / np.float32(32768))


def test_frame_decoder_values() -> None:
    start = parse_start({"type": "start", "call_id": "f", "sample_rate": 16000, "channels": 2})
    frames = decode_frame(np.array([16384, -32768, 0, 32767], "<i2").tobytes(), start)
    assert frames.tolist() == [[0.5, -1.0], [0.0, 32767 / 32768]]
    with pytest.raises(ProtocolError, match="not a whole number of 4-byte sample frames"):
        decode_frame(b"\x00" * 6, start)
    f32 = parse_start({"type": "start", "call_id": "f", "sample_rate": 16000, "encoding": "f32le"})
    with pytest.raises(ProtocolError, match="NaN"):
        decode_frame(np.array([0.1, np.nan], "<f4").tobytes(), f32)


def test_twilio_events() -> None:
    start = parse_twilio_start(
        {"event": "start", "streamSid": "MZ1",
         "start": {"callSid": "CA1", "tracks": ["inbound", "outbound"],
                   "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000}}},
        track_roles=TWILIO_TRACKS)
    assert start.call_id == "CA1" and start.roles == ("customer", "agent")
    payload = base64.b64encode(b"\xff" * 160).decode()
    media = parse_twilio_media({"event": "media", "media": {
        "track": "outbound", "chunk": "7", "timestamp": "140", "payload": payload}},
        max_payload_bytes=1000)
    assert (media.track, media.chunk, media.timestamp_ms, len(media.payload)) == (
        "outbound", 7, 140, 160)
    with pytest.raises(ProtocolError) as info:
        parse_twilio_media({"media": {"payload": "A" * 2000}}, max_payload_bytes=1000)
    assert info.value.close_code == CLOSE_TOO_BIG
    with pytest.raises(ProtocolError, match="not base64"):
        parse_twilio_media({"media": {"payload": "!!!"}}, max_payload_bytes=1000)
    with pytest.raises(ProtocolError, match="audio/x-mulaw"):
        parse_twilio_start({"start": {"callSid": "CA2", "mediaFormat": {
            "encoding": "audio/l16", "sampleRate": 16000}}}, track_roles=TWILIO_TRACKS)


@given(st.lists(st.dictionaries(st.sampled_from(["event", "media", "start", "streamSid"]),
                                st.one_of(st.text(max_size=10), st.integers(),
                                          st.dictionaries(st.sampled_from(
                                              ["payload", "track", "timestamp", "chunk",
                                               "callSid", "tracks", "mediaFormat"]),
                                              st.one_of(st.text(max_size=12), st.integers(),
                                                        st.lists(st.text(max_size=8))),
                                              max_size=4)), max_size=4), max_size=5))
def test_twilio_parsers_never_crash(events: list[dict]) -> None:
    for event in events:
        for parse in (lambda e: parse_twilio_start(e, track_roles=TWILIO_TRACKS),
                      lambda e: parse_twilio_media(e, max_payload_bytes=4000)):
            try:
                parse(event)
            except ProtocolError:
                pass


@given(st.lists(st.integers(1, 5000), min_size=1, max_size=30))
def test_ring_buffer_returns_exactly_what_was_written(chunks: list[int]) -> None:
    ring = RingBuffer(6000)
    stream = np.arange(sum(chunks), dtype=np.float32)
    pos = 0
    for n in chunks:
        ring.write(stream[pos : pos + n])
        pos += n
        length = min(pos, 6000)
        assert np.array_equal(ring.read(pos, length), stream[pos - length : pos])
    with pytest.raises(IndexError):
        ring.read(pos + 1, 10)


def test_windower_timing_and_resampling() -> None:
    w = ChannelWindower(call_id="c", role="customer", channel=0, input_rate_hz=8000,
                        window_s=3.0, hop_s=1.0)
    rng = np.random.default_rng(0)
    audio = (0.2 * rng.standard_normal(8000 * 10)).astype(np.float32)
    windows: list[Window] = []
    for i in range(0, len(audio), 160):  # 20 ms frames
        windows += w.feed(audio[i : i + 160])
    windows += w.feed(np.zeros(0, np.float32), last=True)
    assert [x.index for x in windows] == list(range(8))  # 3-10 s ends, 1 s hop
    assert [x.end_s for x in windows] == [3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0]
    assert all(x.samples.shape == (48_000,) for x in windows)
    # The stream resampler is seamless: same result as resampling the whole file at once.
    import soxr
    whole = soxr.resample(audio, 8000, 16000, quality="HQ")
    assert np.allclose(windows[-1].samples, whole[-48_000:], atol=1e-4)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.floats(-200, 50, allow_nan=False), min_size=1, max_size=300),
       st.floats(0, 100))
def test_vad_percentile_is_numpys_to_the_last_bit(values: list[float], q: float) -> None:
    levels = np.array(values)
    assert percentile(levels, q) == float(np.percentile(levels, q))


def test_vad_marks_silence_and_speech(ravdess_dir) -> None:
    from models.corpora import load_audio

    speech = load_audio(ravdess_dir / "Actor_18/03-01-05-02-01-01-18.flac")
    silence = (1e-4 * np.random.default_rng(0).standard_normal(16000 * 4)).astype(np.float32)
    w = ChannelWindower(call_id="c", role="customer", channel=0, input_rate_hz=16000)
    out = w.feed(np.concatenate([silence, speech[:48000], silence]))
    assert out[0].speech is False and out[0].speech_ratio == 0.0
    assert any(x.speech for x in out[3:6])
    assert out[-1].speech is False


def gated(audio: np.ndarray, vad: VadConfig | None = None) -> list[Window]:
    w = ChannelWindower(call_id="c", role="customer", channel=0, input_rate_hz=16000, vad=vad)
    return w.feed(audio)


@pytest.mark.parametrize("telephone", [False, True], ids=["clean", "telephone"])
@pytest.mark.parametrize("sound", sorted(line_sounds(1.0)))
def test_the_voice_gate_turns_line_sounds_away(sound: str, telephone: bool) -> None:
    """Ringback, busy and DTMF tones and noise bursts are loud enough for an energy gate, and
    the model heard a ringback tone as distress (an alert 8 s into it): the gate scores none
    of their windows."""
    audio = line_sounds(40.0)[sound]
    if telephone:
        audio = telephone_channel(audio)
    loud = [w for w in gated(audio, VadConfig(max_tone_or_noise=None)) if w.speech]
    if sound != "fax_calling":  # 0.5 s of tone in 3.5 s: too little for the energy gate
        assert len(loud) >= 10, "the energy gate alone lets this sound through"
    assert [w.index for w in gated(audio) if w.speech] == []


def speech_call(ravdess_dir, actors: str, n: int = 60) -> np.ndarray:
    from models.corpora import load_audio

    paths = sorted(ravdess_dir.glob(f"Actor_{actors}/*.flac"))
    rng = np.random.default_rng(0)
    gaps = [np.zeros(int(rng.uniform(0.2, 1.5) * 16000), np.float32) for _ in paths[:n]]
    return np.concatenate([part for p, gap in zip(paths[::len(paths) // n][:n], gaps,
                                                  strict=True)
                           for part in (load_audio(p), gap)])


@pytest.mark.parametrize("telephone", [False, True], ids=["clean", "telephone"])
def test_the_voice_gate_leaves_speech_alone(ravdess_dir, telephone: bool) -> None:
    """Speech of every emotion keeps its windows: the tone and noise check turns away at
    most one speech window in two hundred."""
    audio = speech_call(ravdess_dir, "1[0-9]", n=120)
    if telephone:
        audio = telephone_channel(audio)
    before = {w.index for w in gated(audio, VadConfig(max_tone_or_noise=None)) if w.speech}
    after = {w.index for w in gated(audio) if w.speech}
    assert after <= before and len(before) > 300
    assert len(before - after) <= len(before) / 200, sorted(before - after)


@pytest.mark.parametrize("offset", [0.01, -0.05])
def test_a_dc_offset_does_not_hide_speech(ravdess_dir, offset: float) -> None:
    """A DC offset (a sound card's, a gateway's) was counted as level: at 0.01 (−40 dBFS)
    the gate's noise floor rose over quiet speech, and most of its windows went unscored."""
    audio = speech_call(ravdess_dir, "0[12]", n=30)
    plain = [w.speech for w in gated(audio)]
    assert sum(plain) > 30
    assert [w.speech for w in gated(audio + np.float32(offset))] == plain


def test_the_voice_gate_measures_each_frame_once_and_decides_the_same(ravdess_dir) -> None:
    """A channel's gate keeps what it measured of the frames its windows share; a gate that
    measures every window afresh (an uploaded file's) decides every window the same."""
    audio = np.concatenate([speech_call(ravdess_dir, "0[1-3]", n=40),
                            *line_sounds(12.0).values(), speech_call(ravdess_dir, "0[4-6]", 40)])
    streamed = gated(audio)
    fresh = VoiceGate(VadConfig())
    assert [fresh.speech_ratio(w.samples) for w in streamed] == [w.speech_ratio
                                                                 for w in streamed]
    assert 100 < sum(w.speech for w in streamed) < len(streamed) - 100


class EveryFrameGate(VoiceGate):
    """The tone and noise check as it first was: every loud frame of every window measured
    (a channel's gate remembering none), then the shares compared."""

    def _not_a_voice(self, window, loud, start):
        tone, noise = self._measure(window, np.flatnonzero(loud))
        return bool(tone.mean() >= self.config.max_tone_or_noise
                    or noise.mean() >= self.config.max_tone_or_noise)


class CountingGate(VoiceGate):
    def __init__(self, config: VadConfig) -> None:
        super().__init__(config)
        self.measured = 0

    def _measure(self, window, frames):
        self.measured += frames.shape[0]
        return super()._measure(window, frames)


def test_the_voice_gate_stops_measuring_once_the_answer_is_certain(ravdess_dir) -> None:
    """A window's verdict needs only enough of its loud frames measured for the rest not to
    matter: the same ratio for every window of speech, line sounds and noise as measuring
    every loud frame, streamed and not, with a third of the frames measured for speech
    (the gate measured every loud frame once before, the voice gate's largest cost)."""
    speech = speech_call(ravdess_dir, "0[1-3]", n=40)
    audio = np.concatenate([speech, *line_sounds(12.0).values(),
                            telephone_channel(speech_call(ravdess_dir, "0[4-6]", 40))])
    hop = 16_000
    starts = range(0, audio.shape[0] - 3 * hop + 1, hop)
    reference, streamed, fresh = EveryFrameGate(VadConfig()), VoiceGate(VadConfig()), VoiceGate(
        VadConfig())
    for start in starts:
        window = audio[start : start + 3 * hop]
        want = reference.speech_ratio(window)
        assert streamed.speech_ratio(window, start) == want, start
        assert fresh.speech_ratio(window) == want, start

    counting, loud_frames = CountingGate(VadConfig()), 0
    energy = VoiceGate(VadConfig(max_tone_or_noise=None))
    for start in range(0, speech.shape[0] - 3 * hop + 1, hop):
        window = speech[start : start + 3 * hop]
        ratio = energy.speech_ratio(window)
        counting.speech_ratio(window, start)
        if ratio >= VadConfig().min_speech_ratio:
            loud_frames += round(ratio * 150)
    # Every loud frame belongs to three windows: measuring each once is a third of these.
    assert loud_frames > 3000
    assert counting.measured < 0.6 * loud_frames / 3, (counting.measured, loud_frames)


def test_the_loop_profile_counts_the_gates_numpy_work_as_the_gate(ravdess_dir, tmp_path) -> None:
    """``bench load --profile`` put each function's own time under the file it lives in, so
    the voice gate's FFTs, sums and partitions counted as numpy and built-ins: the gate showed
    as 1-2 % of the event loop. Generic code's time now goes to the callmon code calling it."""
    import cProfile

    from streamer.schema import WindowResult, dumps
    from streamer.tools.bench import profile_breakdown

    audio = speech_call(ravdess_dir, "0[12]", n=20)
    windows = [audio[s : s + 48_000] for s in range(0, audio.shape[0] - 48_000, 16_000)]
    events = [WindowResult(call_id="c", role="customer", channel=0, window_index=i, start_s=i,
                           end_s=i + 3, speech=True, speech_ratio=0.8,
                           scores={"neutral": 0.2, "angry": 0.8}, frustration=0.8, distress=0.0)
              for i in range(200)]

    def work() -> None:
        gate = VoiceGate(VadConfig())
        for i, window in enumerate(windows):
            gate.speech_ratio(window, i * 16_000)
        for event in events:
            dumps(event)

    profiler = cProfile.Profile()
    profiler.runcall(work)
    profiler.dump_stats(tmp_path / "loop.prof")
    shares = profile_breakdown(tmp_path / "loop.prof")
    assert shares["voice gate"] > 0.6, shares
    assert shares["calls, scheduler, alerts"] > 0.05, shares  # schema.dumps and its JSON
    assert shares.get("numpy", 0) < 0.02, shares  # what is left: this test's own loop


#: py-spy's raw stacks as it writes them with native frames: one sample group a line.
SPY_STACKS = """\
_run_code (<frozen runpy>:88);main (callmon_cli.py:60);Runner.run (asyncio/runners.py:118);\
ChannelWindower._window (streamer/windowing.py:333);VoiceGate.speech_ratio (streamer/windowing.py:152);\
array_multiply (numpy/_core/_multiarray_umath.cpython-311-x86_64-linux-gnu.so);\
ufunc_generic_fastcall (numpy/_core/_multiarray_umath.cpython-311-x86_64-linux-gnu.so) 5
main (callmon_cli.py:60);Runner.run (asyncio/runners.py:118);\
Connection.data_received (websockets/asyncio/connection.py:1089);\
Protocol.receive_data (websockets/protocol.py:273) 3
main (callmon_cli.py:60);Runner.run (asyncio/runners.py:118);\
__pyx_f_6uvloop_4loop_4Loop__on_idle (loop.c:1234);read (libc.so.6) 2
main (callmon_cli.py:60);Runner.run (asyncio/runners.py:118);\
ResultRouter.emit (streamer/results.py:62);dumps (streamer/schema.py:100);\
JSONEncoder.encode (json/encoder.py:200);encoder_listencode_obj (_json.c:1401) 4
main (callmon_cli.py:60);Runner.run (asyncio/runners.py:118);CallSession.feed (streamer/calls.py:187);\
gc_collect_main (libpython3.11.so.1.0) 1
main (callmon_cli.py:60);Runner.run (asyncio/runners.py:118);\
ABCMeta.__instancecheck__ (<frozen abc>:119) 1
main (callmon_cli.py:60);Runner.run (asyncio/runners.py:118);\
__pyx_f_6uvloop_4loop_4Loop__run (loop.c:99);epoll_wait (libc.so.6) 50
Thread._bootstrap (threading.py:1002);_worker (concurrent/futures/thread.py:81);\
RemoteModel.run_windows (streamer/inference_server.py:272);recv (libc.so.6) 30
"""


def test_sampled_stacks_count_for_the_loop_code_that_asked(tmp_path) -> None:
    """``bench load --sample``: each busy sample of the event loop's thread counts for the
    innermost callmon (or library) frame of a group, numpy, JSON and native code for their
    caller; waiting for input and other threads do not count."""
    from streamer.tools.bench import sampled_breakdown

    (tmp_path / "raw.txt").write_text(SPY_STACKS)
    shares, samples = sampled_breakdown(tmp_path / "raw.txt")
    assert samples == 16  # 5 + 3 + 2 + 4 + 1 + 1: not the 50 waiting, not the model's thread
    assert shares == {"voice gate": round(5 / 16, 4), "calls, scheduler, alerts": 0.25,
                      "websocket framing and handshake": round(3 / 16, 4),
                      "asyncio and sockets": 0.125, "garbage collection": 0.0625,
                      "other": 0.0625}


def test_bench_load_samples_a_real_loop_with_py_spy(tmp_path) -> None:
    """The sampler of ``bench load --sample`` (py-spy, native stacks) on a real process whose
    event loop spends its time in the voice gate: the breakdown names the gate."""
    import subprocess
    import sys

    from streamer import children
    from streamer.tools.bench import LoopSampler, sampled_breakdown

    busy = ("import asyncio\n"
            "import numpy as np\n"
            "from streamer import aio\n"
            "from streamer.windowing import VadConfig, VoiceGate\n"
            "async def main():\n"
            "    gate, rng = VoiceGate(VadConfig()), np.random.default_rng(0)\n"
            "    window = (0.1 * rng.standard_normal(48_000)).astype(np.float32)\n"
            "    print('ready', flush=True)\n"
            "    while True:  # resumed by the loop each time, as a server's tasks are\n"
            "        gate.speech_ratio(window)\n"
            "        await asyncio.sleep(0)\n"
            "aio.run(main())\n")
    process = children.popen([sys.executable, "-c", busy], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None and process.stdout.readline() == "ready\n"
        sampler = LoopSampler(process.pid, tmp_path / "raw.txt", seconds=3, delay_s=0)
        sampler.join(timeout_s=30)
        assert sampler.returncode == 0
    finally:
        process.kill()
        process.wait()
    shares, samples = sampled_breakdown(tmp_path / "raw.txt")
    assert samples > 100, samples
    assert shares["voice gate"] > 0.8, shares


flags = st.lists(st.tuples(st.booleans(), st.booleans(), st.booleans()), min_size=1,
                 max_size=160)


@settings(max_examples=400, deadline=None)
@given(flags, st.floats(0.05, 1.0))
def test_a_verdict_from_some_frames_holds_whatever_the_rest_are(frames, most: float) -> None:
    tone, noise, known = (np.array(column) for column in zip(*frames, strict=True))
    verdict, short = _verdict(tone, noise, known, most)
    unknown = ~known
    completions = [(tone & known | unknown * t, noise & known | unknown * n)
                   for t in (False, True) for n in (False, True)]
    answers = {bool(t.mean() >= most or n.mean() >= most) for t, n in completions}
    if verdict is None:
        assert answers == {False, True} and 1 <= short <= unknown.sum()
    else:
        assert answers == {verdict}
    # Measuring ``short`` more frames, all neither, can settle it.
    if verdict is None:
        more = known.copy()
        more[np.flatnonzero(unknown)[:short]] = True
        settled, _ = _verdict(tone & known, noise & known, more, most)
        assert settled is not None or unknown.sum() > short


ANGRY = {"neutral": 0.1, "angry": 0.9}
CALM = {"neutral": 0.9, "angry": 0.05}


def test_alert_hysteresis_clear_hold_and_roles() -> None:
    cfg = AlertConfig(smoothing=1.0, frustration=AlertRule(on=0.6, off=0.3, consecutive=2,
                                                           clear_hold_s=3))
    a = RoleAlerts("c", "customer", cfg)
    assert a.update(scores=ANGRY, window_index=0, end_s=3) == []  # 1 of 2
    assert a.update(scores=None, window_index=1, end_s=4) == []  # silence: no break, no count
    raised = a.update(scores=ANGRY, window_index=2, end_s=5)
    assert [(x.kind, x.state) for x in raised] == [("frustration", "raised")]
    assert a.update(scores={"angry": 0.5}, window_index=3, end_s=6) == []  # between off and on
    # Below off, but not for clear_hold_s yet; back up again: the same alert goes on.
    assert a.update(scores=CALM, window_index=4, end_s=7) == []
    assert a.update(scores=CALM, window_index=5, end_s=8) == []
    assert a.update(scores=ANGRY, window_index=6, end_s=9) == []
    assert a.raised == 1 and a.active()["frustration"] == raised[0].id
    # Below off for 3 s: cleared.
    assert a.update(scores=CALM, window_index=7, end_s=10) == []
    assert a.update(scores=CALM, window_index=9, end_s=12) == []
    cleared = a.update(scores=CALM, window_index=10, end_s=13)
    assert [x.state for x in cleared] == ["cleared"]
    assert cleared[0].raised_id == raised[0].id and cleared[0].reason == "score"
    agent = RoleAlerts("c", "agent", cfg)
    for i in range(5):
        assert agent.update(scores=ANGRY, window_index=i, end_s=3 + i) == []
    assert agent.smoothed("frustration") == pytest.approx(0.9)
    distress = RoleAlerts("c", "customer", AlertConfig(smoothing=1.0))
    out = []
    for i in range(3):
        out += distress.update(scores={"sad": 0.4, "fearful": 0.4}, window_index=i, end_s=3 + i)
    assert [x.kind for x in out] == ["distress"]
    with pytest.raises(ValueError):
        AlertRule(on=0.3, off=0.5)


def test_false_alert_does_not_hold_back_a_real_onset() -> None:
    """Defect: the cooldown ran from the clear, so a false alert just before a real onset
    held the real one back for up to 30 s. Now a raise is never held back."""
    cfg = AlertConfig(smoothing=1.0, frustration=AlertRule(on=0.6, off=0.3, consecutive=2,
                                                           clear_hold_s=2))
    a = RoleAlerts("c", "customer", cfg)
    t = 3.0
    events = []
    for scores in [ANGRY, ANGRY, CALM, CALM, CALM]:  # a false alert, then it clears
        events += a.update(scores=scores, window_index=int(t), end_s=t)
        t += 1
    assert [x.state for x in events] == ["raised", "cleared"]
    onset = t
    real = []
    for scores in [ANGRY, ANGRY]:  # the real anger, right after the clear
        real += a.update(scores=scores, window_index=int(t), end_s=t)
        t += 1
    assert [x.state for x in real] == ["raised"]
    assert real[0].call_time_s == onset + 1  # the second angry window, as for any raise


def test_alerts_still_active_are_cleared_when_the_call_ends() -> None:
    start = StreamStart(call_id="c-end", sample_rate=16_000, encoding="pcm_s16le", channels=2,
                        roles=("customer", "agent"))
    session = CallSession(start, protocol="native", windowing=WindowingConfig(),
                          alerts=AlertConfig(smoothing=1.0), send_results=False)
    session.feed(np.zeros((16_000 * 6, 2), dtype=np.float32))
    raised = []
    for i in range(3):
        raised += session.alerts["customer"].update(scores=ANGRY, window_index=i, end_s=3 + i)
    assert [x.state for x in raised] == ["raised"]
    closing = session.close_alerts()
    assert [(x.kind, x.state, x.reason, x.raised_id) for x in closing] == [
        ("frustration", "cleared", "call_ended", raised[0].id)]
    assert closing[0].call_time_s == 6.0 and closing[0].window_index == 3
    assert session.alerts["customer"].active() == {} and session.close_alerts() == []


def test_results_leave_in_window_order() -> None:
    order = ResultOrder()
    w = [_window("c", i) for i in range(5)]
    assert order.put(w[1], None) == []  # silent window 1 waits for speech window 0
    assert order.put(w[2], None, dropped=True) == []
    assert [x.index for x, _ in order.put(w[0], {"angry": 1.0})] == [0, 1]  # 2 was dropped
    assert [x.index for x, _ in order.put(w[3], None)] == [3]
    assert [x.index for x, _ in order.put(w[4], None)] == [4] and order.flush() == []


def _window(call: str, i: int, channel: int = 0) -> Window:
    return Window(call_id=call, role="customer", channel=channel, index=i, start_s=i,
                  end_s=i + 3, samples=np.full(16, float(i), np.float32), speech_ratio=1.0,
                  speech=True, ready_at=time.monotonic())


def test_scheduler_batches_and_drops_oldest() -> None:
    seen_batches: list[int] = []

    def predict(x: np.ndarray) -> np.ndarray:
        seen_batches.append(len(x))
        return np.stack([x.mean(axis=1), 1 - x.mean(axis=1)], axis=1)

    async def main() -> tuple[dict, list]:
        sched = InferenceScheduler(predict, max_batch=4, max_wait_ms=5, max_pending_per_stream=2)
        results: dict = {}
        sched.start()
        for i in range(5):  # submitted before the loop runs: stream "a" overflows
            sched.submit(_window("a", i), lambda w, p: results.setdefault(("a", w.index), p))
        sched.submit(_window("b", 0), lambda w, p: results.setdefault(("b", w.index), p))
        await sched.drained()
        await sched.stop()
        return results, sched.stats

    results, stats = asyncio.run(main())
    dropped = [k for k, v in results.items() if v is None]
    scored = {k: v for k, v in results.items() if v is not None}
    assert dropped == [("a", 0), ("a", 1), ("a", 2)]  # oldest first
    assert sorted(scored) == [("a", 3), ("a", 4), ("b", 0)]
    assert scored[("a", 4)][0] == pytest.approx(4.0)  # each window got its own row
    assert stats.dropped == 3 and stats.scored == 3 and seen_batches == [3]


def test_scheduler_sheds_stale_windows_and_keeps_fresh_ones() -> None:
    """A window that waited longer than ``max_age_s`` is shed when a batch is formed (an
    overloaded server stays current); a fresh one, however many of its stream wait, is not."""
    batches: list[list[float]] = []

    def predict(x: np.ndarray) -> np.ndarray:
        batches.append([float(v) for v in x[:, 0]])
        return np.stack([x.mean(axis=1), 1 - x.mean(axis=1)], axis=1)

    async def main() -> tuple[dict, object]:
        sched = InferenceScheduler(predict, max_batch=32, max_wait_ms=5, max_age_s=2.0)
        results: dict = {}
        sched.start()
        for i in range(12):  # a burst of one stream, the first three already stale
            window = _window("a", i)
            if i < 3:
                window = dataclasses.replace(window, ready_at=time.monotonic() - 2.5)
            sched.submit(window, lambda w, p: results.setdefault(w.index, p))
        await sched.drained()
        await sched.stop()
        return results, sched.stats

    results, stats = asyncio.run(main())
    assert [i for i, p in sorted(results.items()) if p is None] == [0, 1, 2]
    assert [i for i, p in sorted(results.items()) if p is not None] == list(range(3, 12))
    assert batches == [[float(i) for i in range(3, 12)]]
    assert stats.dropped == 3 and stats.scored == 9 and stats.submitted == 12


def test_result_json_is_versioned() -> None:
    from streamer.schema import WindowResult, dumps

    r = WindowResult(call_id="c", role="customer", channel=0, window_index=0, start_s=0,
                     end_s=3, speech=True, speech_ratio=0.8,
                     scores={"neutral": 0.2, "angry": 0.8}, frustration=0.8, distress=0.0)
    data = json.loads(dumps(r))
    assert data["v"] == 1 and data["type"] == "window"
    assert data["emotion"] == "angry" and data["confidence"] == 0.8


def test_token_bucket_and_audio_pacer_on_a_fake_clock() -> None:
    from streamer.limits import AddressLimit, AudioPacer, TokenBucket

    now = [0.0]
    bucket = TokenBucket(rate=10, burst=5, clock=lambda: now[0])
    assert [bucket.take() for _ in range(6)] == [True] * 5 + [False]
    now[0] = 0.35  # 3.5 tokens back
    assert [bucket.take() for _ in range(4)] == [True] * 3 + [False]
    now[0] = 100.0
    assert sum(bucket.take() for _ in range(20)) == 5  # refills only up to the burst

    now[0] = 0.0
    pacer = AudioPacer(speed=2.0, burst_s=4.0, clock=lambda: now[0])
    assert pacer.add(4.0) == 0.0  # the head start
    assert pacer.add(1.0) == 0.5  # 1 s of audio ahead at 2x: half a second early
    now[0] = 0.5
    assert pacer.add(0.0) == 0.0
    now[0] = 10.0
    assert pacer.add(19.0) == 0.0 and pacer.add(1.0) == 0.5  # 4 s + 2 x 10 s allowed

    limit = AddressLimit(2)
    limit.acquire("a")
    limit.acquire("a")
    assert limit.full("a") and not limit.full("b")
    limit.release("a")
    assert not limit.full("a")
    limit.release("a")
    assert limit.open == {}


def test_caller_baseline_scores_relative_to_the_callers_own_level() -> None:
    """A caller whose calm voice the model hears as 0.5 sad: with a baseline learned from
    the first windows, that level is 0 and only a rise above it alerts."""
    rule = AlertRule(on=0.5, off=0.2, consecutive=2, clear_hold_s=0)
    cfg = AlertConfig(smoothing=1.0, baseline="first", baseline_windows=3, distress=rule,
                      frustration=rule)
    a = RoleAlerts("c", "customer", cfg)
    usual = {"neutral": 0.5, "sad": 0.5}
    out = []
    for i in range(3):  # learning the reference: the absolute score decides meanwhile
        out += a.update(scores=usual, window_index=i, end_s=3 + i)
        assert a.value("distress") == pytest.approx(0.5)
    out = [x for x in out if x.state == "raised"]
    assert [x.kind for x in out] == ["distress"]  # 0.5 ≥ on while learning
    a.reset()
    for i in range(3):
        a.update(scores={"neutral": 0.8, "sad": 0.2}, window_index=i, end_s=3 + i)
    assert a.kinds["distress"].reference == pytest.approx(0.2)
    # 0.2 is this caller's usual: value 0. 0.64 is (0.64 - 0.2) / 0.8 = 0.55 of the headroom.
    assert a.update(scores={"neutral": 0.8, "sad": 0.2}, window_index=3, end_s=6) == []
    assert a.value("distress") == pytest.approx(0.0)
    a.update(scores={"neutral": 0.36, "sad": 0.64}, window_index=4, end_s=7)
    assert a.value("distress") == pytest.approx(0.55)
    raised = a.update(scores={"neutral": 0.36, "sad": 0.64}, window_index=5, end_s=8)
    assert [(x.kind, x.state) for x in raised] == [("distress", "raised")]
    # "running" keeps adapting while nothing is building: a slow drift is absorbed.
    run = RoleAlerts("c", "customer", AlertConfig(smoothing=1.0, baseline="running",
                                                  baseline_windows=1, baseline_rate=0.5))
    for i, sad in enumerate([0.1, 0.3, 0.3, 0.3, 0.3]):
        run.update(scores={"sad": sad}, window_index=i, end_s=3 + i)
    assert run.kinds["distress"].reference == pytest.approx(0.3, abs=0.02)
    with pytest.raises(ValueError, match="baseline must be one of"):
        AlertConfig(baseline="median")
    # A rate outside (0, 1] would push the reference away from the caller's scores (or
    # past them) instead of following them.
    for rate in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="baseline_rate must be in"):
            AlertConfig(baseline="running", baseline_rate=rate)


def test_a_caller_upset_from_the_first_word_keeps_the_alert() -> None:
    """With a caller baseline, speech under an active alert never becomes the reference:
    the alert raised on the first angry windows stays up while the anger goes on (learning
    from it would make anger the caller's usual and clear the alert), and the reference is
    learned once the caller calms down."""
    rule = AlertRule(on=0.5, off=0.3, consecutive=2, clear_hold_s=5)
    for baseline in ("first", "running"):
        a = RoleAlerts("c", "customer", AlertConfig(smoothing=1.0, baseline=baseline,
                                                    baseline_windows=4, frustration=rule,
                                                    distress=rule))
        out = []
        for i in range(60):
            out += a.update(scores={"angry": 0.85, "neutral": 0.15}, window_index=i,
                            end_s=3 + i)
        assert [(x.kind, x.state) for x in out] == [("frustration", "raised")], baseline
        assert a.kinds["frustration"].reference is None
        assert a.value("frustration") == pytest.approx(0.85)
        for i in range(60, 80):  # calm again: cleared, and the calm voice is the reference
            out += a.update(scores={"angry": 0.1, "neutral": 0.9}, window_index=i, end_s=3 + i)
        assert [(x.kind, x.state) for x in out][-1] == ("frustration", "cleared")
        # Learned from the calm windows (and the two angry windows that raised the alert);
        # "running" keeps drifting down towards the calm level.
        learned = (2 * 0.85 + 2 * 0.1) / 4
        reference = a.kinds["frustration"].reference
        assert reference is not None and 0.1 < reference <= learned + 1e-9
        assert baseline == "running" or reference == pytest.approx(learned)
        assert a.value("frustration") == pytest.approx(0.0)
        for i in range(80, 83):  # angry again: relative to the calm reference, it alerts
            out += a.update(scores={"angry": 0.85, "neutral": 0.15}, window_index=i,
                            end_s=3 + i)
        assert [(x.kind, x.state) for x in out][-1] == ("frustration", "raised")


def test_alert_rules_come_from_the_card_under_explicit_settings() -> None:
    from streamer.alerts import alert_config_dict, alert_config_from
    from streamer.service import alert_config
    from streamer.settings import Settings

    card = {"smoothing": 0.35, "baseline": "first", "baseline_windows": 5,
            "frustration": {"on": 0.7, "off": 0.4, "consecutive": 4, "clear_hold_s": 10},
            "distress": {"on": 0.8, "off": 0.5, "consecutive": 4, "clear_hold_s": 10}}
    cfg = alert_config_from(card)
    assert alert_config_dict(cfg) == {**card, "baseline_rate": 0.02}
    assert alert_config_from(None) == AlertConfig()
    # Settings override the card field by field; unset settings leave it alone.
    s = Settings(frustration_on=0.9, alert_consecutive=2, alert_roles="customer,agent")
    cfg = alert_config(s, card)
    assert (cfg.frustration.on, cfg.frustration.off) == (0.9, 0.4)
    assert cfg.distress.on == 0.8 and cfg.frustration.consecutive == cfg.distress.consecutive == 2
    assert cfg.smoothing == 0.35 and cfg.alert_roles == ("customer", "agent")
    with pytest.raises(ValueError):
        alert_config(Settings(frustration_on=0.2), card)  # on below the card's off


def test_event_loop_choice() -> None:
    from streamer import aio

    async def which() -> str:
        return aio.loop_name()

    assert aio.run(which(), "asyncio") == "asyncio"
    assert aio.run(which(), "uvloop") == "uvloop"
    assert aio.run(which()) == "uvloop"  # auto: uvloop when installed
    with pytest.raises(ValueError, match="loop must be one of"):
        aio.run(which(), "trio")


def test_serve_raises_its_open_file_limit() -> None:
    """Every call is a socket: a node started under the usual soft limit (1024) raises it to
    the hard limit instead of refusing its thousandth call."""
    import resource
    import subprocess
    import sys

    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    code = ("import resource\n"
            "resource.setrlimit(resource.RLIMIT_NOFILE, (256, resource.getrlimit("
            "resource.RLIMIT_NOFILE)[1]))\n"
            "from streamer.aio import raise_open_file_limit\n"
            "print(raise_open_file_limit())\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout) == (hard if hard != resource.RLIM_INFINITY else 1 << 20)
