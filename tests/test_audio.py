from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from models.audio import (
    decode_alaw,
    decode_mulaw,
    encode_alaw,
    encode_mulaw,
    float_to_int16,
    telephone_channel,
)
from models.preprocessing import clip_windows, fit_length, window_starts
from trainer.augment import add_noise, augment, crop, random_gain

from .conftest import tone


def band_energy(x: np.ndarray, rate: int, lo: float, hi: float) -> float:
    spec = np.abs(np.fft.rfft(x)) ** 2
    freqs = np.fft.rfftfreq(len(x), 1 / rate)
    return float(spec[(freqs >= lo) & (freqs < hi)].sum())


def test_crop_lengths_and_padding() -> None:
    rng = np.random.default_rng(0)
    long = np.arange(60_000, dtype=np.float32)
    c = crop(long, 48_000, rng)
    assert c.shape == (48_000,) and np.all(np.diff(c) == 1)  # a contiguous slice
    centre = crop(long, 48_000, None)
    assert centre[0] == 6_000
    short = np.ones(10_000, dtype=np.float32)
    p = crop(short, 48_000, rng)
    assert p.shape == (48_000,) and p.sum() == 10_000


def test_telephone_channel_is_band_limited() -> None:
    rng = np.random.default_rng(1)
    noise = (0.1 * rng.standard_normal(48_000)).astype(np.float32)
    out = telephone_channel(noise)
    assert out.shape == noise.shape and out.dtype == np.float32
    # Above 4 kHz the 8 kHz line carries nothing; below 300 Hz the band-pass removes most.
    total = band_energy(out, 16_000, 0, 8_000)
    assert band_energy(out, 16_000, 4_100, 8_000) / total < 1e-3
    assert band_energy(out, 16_000, 0, 200) / total < 0.02
    assert band_energy(out, 16_000, 500, 3_000) / total > 0.6


def test_noise_reaches_requested_snr() -> None:
    rng = np.random.default_rng(2)
    clean = tone(3.0, 16_000)
    for snr in (0.0, 10.0, 25.0):
        noisy = add_noise(clean, snr, rng)
        measured = 10 * np.log10(np.mean(clean**2) / np.mean((noisy - clean) ** 2))
        assert abs(measured - snr) < 0.1


def test_gain_and_augment_ranges() -> None:
    rng = np.random.default_rng(3)
    x = tone(3.0, 16_000, amp=0.5)
    for _ in range(20):
        y = random_gain(x, rng)
        ratio = np.abs(y).max() / np.abs(x).max()
        assert 10 ** (-12 / 20) - 1e-6 <= ratio <= 2.0 + 1e-6
        z = augment(x, rng)
        assert z.shape == x.shape and z.dtype == np.float32
        assert np.isfinite(z).all() and np.abs(z).max() <= 1.0


@given(st.integers(0, 200_000), st.integers(1, 60_000), st.integers(1, 30_000))
def test_window_starts_cover_the_clip(n: int, window: int, hop: int) -> None:
    starts = window_starts(n, window, hop)
    assert starts[0] == 0
    if n > window:
        assert starts[-1] == n - window  # the tail is always scored
        assert all(0 < b - a <= hop for a, b in zip(starts, starts[1:], strict=False))
    else:
        assert starts == [0]


def test_clip_windows_shapes() -> None:
    audio = np.arange(70_000, dtype=np.float32)
    w = clip_windows(audio, 48_000, 16_000)
    assert w.shape == (3, 48_000)
    assert w[-1, -1] == 69_999
    assert fit_length(np.ones(10, np.float32), 20).sum() == 10


def test_g711_tables_match_reference_points() -> None:
    # ITU-T G.711: μ-law 0x00 is the most negative sample, 0xFF is zero; A-law 0xD5 is +8.
    assert decode_mulaw(b"\x00\x80\xff\x7f").tolist() == [-32124, 32124, 0, 0]
    assert decode_alaw(b"\xd5\x55\xaa\x2a").tolist() == [8, -8, 32256, -32256]


@settings(max_examples=50)
@given(arrays(np.int16, st.integers(1, 4000)))
def test_g711_round_trip_error_is_bounded(samples: np.ndarray) -> None:
    for encode, decode in ((encode_mulaw, decode_mulaw), (encode_alaw, decode_alaw)):
        back = decode(encode(samples).tobytes()).astype(np.int32)
        err = np.abs(back - samples.astype(np.int32))
        # Companding: the step grows with magnitude, roughly 1/16 of it at most.
        assert np.all(err <= np.maximum(np.abs(samples.astype(np.int32)) // 15, 16) + 1)


def test_every_codeword_round_trips() -> None:
    codes = np.arange(256, dtype=np.uint8)
    assert (encode_alaw(decode_alaw(codes.tobytes())) == codes).all()
    mu = encode_mulaw(decode_mulaw(codes.tobytes()))
    assert (mu == codes).sum() == 255  # 0x7F and 0xFF both mean zero
    assert float_to_int16(np.array([1.5, -1.5, 0.5])).tolist() == [32767, -32768, 16384]


def test_a_batch_says_what_is_wrong_with_the_audio() -> None:
    """Empty audio was 'expected audio of shape (samples,) or (batch, samples), got (1, 0)':
    a shape it had, in words that hid the problem."""
    from models.preprocessing import as_batch

    assert as_batch(np.zeros(3)).shape == (1, 3)
    for empty in (np.zeros(0), np.zeros((0, 48_000)), np.zeros((2, 0))):
        with pytest.raises(ValueError, match="empty audio .*need at least one sample"):
            as_batch(empty)
    with pytest.raises(ValueError, match=r"of shape \(samples,\) or \(batch, samples\)"):
        as_batch(np.zeros((2, 2, 2)))
    with pytest.raises(ValueError, match="NaN or infinite"):
        as_batch(np.array([0.0, np.inf]))
