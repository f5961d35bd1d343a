"""Sounds a telephone line carries that are no voice, for the voice gate's tests and benchmark:
call-progress tones (frequencies and cadences as ITU-T E.180 lists them for the US, the UK
and Europe), DTMF digits, fax and modem tones, and noise bursts.

Each is a float32 signal at ``rate`` Hz, scaled to a level phones send (peaks about −10 dBFS).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

#: (frequencies in Hz, cadence as (on s, off s) pairs): one pattern, repeated.
TONES: dict[str, tuple[tuple[float, ...], tuple[tuple[float, float], ...]]] = {
    "ringback_us": ((440.0, 480.0), ((2.0, 4.0),)),
    "ringback_uk": ((400.0, 450.0), ((0.4, 0.2), (0.4, 2.0))),
    "ringback_eu": ((425.0,), ((1.0, 4.0),)),
    "busy_us": ((480.0, 620.0), ((0.5, 0.5),)),
    "busy_eu": ((425.0,), ((0.5, 0.5),)),
    "reorder_us": ((480.0, 620.0), ((0.25, 0.25),)),
    "fax_calling": ((1100.0,), ((0.5, 3.0),)),
    "modem_answer": ((2100.0,), ((3.3, 0.5),)),
}
#: DTMF: row and column frequencies of the keys 1-9, *, 0, #.
DTMF_ROWS = (697.0, 770.0, 852.0, 941.0)
DTMF_COLUMNS = (1209.0, 1336.0, 1477.0)
#: Special information tone (E.180 §4.4): three rising tones, then silence.
SIT = ((913.8, 0.274), (1370.6, 0.274), (1776.7, 0.380))

LEVEL = 0.3  # peak amplitude of a tone: about −10 dBFS


def _tone(freqs: tuple[float, ...], seconds: float, rate: int) -> np.ndarray:
    t = np.arange(int(round(seconds * rate))) / rate
    waves = np.sin(2 * np.pi * np.asarray(freqs)[:, None] * t)
    return (LEVEL * waves.mean(axis=0)).astype(np.float32)


def _silence(seconds: float, rate: int) -> np.ndarray:
    return np.zeros(int(round(seconds * rate)), np.float32)


def _repeat(pattern: Callable[[], list[np.ndarray]], seconds: float, rate: int) -> np.ndarray:
    parts: list[np.ndarray] = []
    total = int(round(seconds * rate))
    while sum(p.shape[0] for p in parts) < total:
        parts += pattern()
    return np.concatenate(parts)[:total]


def cadenced_tone(name: str, seconds: float, rate: int = 16_000) -> np.ndarray:
    """One of :data:`TONES` for ``seconds``."""
    freqs, cadence = TONES[name]
    return _repeat(lambda: [part for on, off in cadence
                            for part in (_tone(freqs, on, rate), _silence(off, rate))],
                   seconds, rate)


def dtmf_dialling(seconds: float, rate: int = 16_000) -> np.ndarray:
    """An auto-dialler keying the twelve digits, 100 ms on and 100 ms off, a 2 s pause after
    each twelve."""
    def pattern() -> list[np.ndarray]:
        parts = []
        for key in range(12):
            pair = (DTMF_ROWS[key // 3], DTMF_COLUMNS[key % 3])
            parts += [_tone(pair, 0.1, rate), _silence(0.1, rate)]
        return [*parts, _silence(2.0, rate)]
    return _repeat(pattern, seconds, rate)


def special_information_tone(seconds: float, rate: int = 16_000) -> np.ndarray:
    """The three-tone intercept (number unobtainable) before a recorded announcement."""
    return _repeat(lambda: [*(_tone((f,), s, rate) for f, s in SIT), _silence(1.0, rate)],
                   seconds, rate)


def noise_bursts(seconds: float, rate: int = 16_000, seed: int = 0) -> np.ndarray:
    """White noise switched on and off a few times a second (a rustling handset, a
    crackling line)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(round(seconds * rate))) / rate
    gate = np.where(np.sin(2 * np.pi * 2.0 * t) > 0.5, 1.0, 0.05)
    return (0.1 * rng.standard_normal(t.shape[0]) * gate).astype(np.float32)


def line_sounds(seconds: float, rate: int = 16_000) -> dict[str, np.ndarray]:
    """Every sound here, ``seconds`` long each."""
    sounds = {name: cadenced_tone(name, seconds, rate) for name in TONES}
    sounds["dtmf"] = dtmf_dialling(seconds, rate)
    sounds["special_information"] = special_information_tone(seconds, rate)
    sounds["noise_bursts"] = noise_bursts(seconds, rate)
    return sounds
