"""How far an alert-benchmark figure can be trusted: a bootstrap over speakers.

False alerts cluster by voice: one speaker whose calm speech the model hears as sad raises
most of a fold's distress alerts, and the next speaker none. The calls and the alerts are
therefore not independent draws; the speakers are. Every interval here resamples speakers
(with replacement, within their corpus, so a draw keeps the corpora's proportions), adds up
their false alerts, calm hours, targets and detections, and takes the figure of the sum,
exactly as the benchmark computes it for the real set.

:func:`paired` compares two reports on the *same* speakers and calls (two recipes judged by
the same benchmark): each draw resamples the speakers once for both, so a voice that is hard
for both does not widen the interval of their difference. A side may be several seeds of one
recipe: it is then their mean, and each draw resamples its seeds too.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import numpy as np

DRAWS = 2000
LEVEL = 0.95


def _parts(block: dict) -> tuple[list[str], list[str]]:
    """The alert kinds and the target keys of one figures block (``Tally.figures``)."""
    keys = [k for k, v in block.items() if isinstance(v, dict) and "detected_within_deadline" in v]
    return list(block["false_alerts"]), keys


def _arrays(per_speaker: Mapping[str, dict], speakers: Sequence[str]
            ) -> tuple[list[str], np.ndarray, np.ndarray]:
    """The figure names (false alerts per hour of calm speech per kind, then the share of each
    target's calls alerted within its deadline), and per speaker (rows) and figure (columns)
    the figure's numerator and denominator."""
    kinds, keys = _parts(per_speaker[speakers[0]])
    names = [f"{kind}_false_alerts_per_hour" for kind in kinds] + [
        f"{key}_detection_rate" for key in keys]
    num = np.zeros((len(speakers), len(names)))
    den = np.zeros_like(num)
    for i, s in enumerate(speakers):
        block = per_speaker[s]
        for j, kind in enumerate(kinds):
            num[i, j] = block["false_alerts"][kind]
            den[i, j] = block["calm_hours"]
        for j, key in enumerate(keys, start=len(kinds)):
            num[i, j] = block[key]["detected_within_deadline"]
            den[i, j] = block[key]["calls"]
    return names, num, den


def _draws(speakers: Sequence[str], draws: int, seed: int) -> np.ndarray:
    """``draws`` resamplings of the speakers' row indices, each corpus resampled within
    itself (a speaker is ``corpus/id``)."""
    rng = np.random.default_rng(seed)
    corpora: dict[str, list[int]] = {}
    for i, s in enumerate(speakers):
        corpora.setdefault(s.split("/")[0], []).append(i)
    return np.concatenate([np.asarray(rows)[rng.integers(0, len(rows), (draws, len(rows)))]
                           for rows in corpora.values()], axis=1)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def _of_sum(num: np.ndarray, den: np.ndarray, idx: np.ndarray | None = None) -> np.ndarray:
    """Each figure of the speakers summed: all of them, or of each draw of ``idx``. ``num``
    is ``(speakers, figures)``, or ``(draws, speakers, figures)`` when each draw has its own
    numerators (runs resampled per draw)."""
    if idx is None:
        return _ratio(num.sum(axis=0), den.sum(axis=0))
    picked = num[idx] if num.ndim == 2 else np.take_along_axis(num, idx[:, :, None], axis=1)
    return _ratio(picked.sum(axis=1), den[idx].sum(axis=1))


def _bounds(samples: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    tail = (1.0 - level) / 2 * 100
    with warnings.catch_warnings():  # a figure without calls is all NaN: reported as None
        warnings.simplefilter("ignore", RuntimeWarning)
        lo, hi = np.nanpercentile(samples, [tail, 100 - tail], axis=0)
    return lo, hi


def _rounded(x: float) -> float | None:
    return None if not np.isfinite(x) else round(float(x), 3)


def intervals(per_speaker: Mapping[str, dict], *, draws: int = DRAWS, level: float = LEVEL,
              seed: int = 0) -> dict:
    """Each figure (false alerts per hour per kind, each target's detection rate) over the
    speakers of ``per_speaker`` (a benchmark report's ``per_speaker`` blocks), with its
    ``level`` bootstrap interval over speakers.

    Returns:
        ``{"speakers": n, "draws": .., "level": .., "figures": {name: {"value", "low",
        "high"}}}``; a figure no speaker has (no calls of that target) is ``None``.
    """
    speakers = sorted(per_speaker)
    if not speakers:
        raise ValueError("no speakers to resample")
    names, num, den = _arrays(per_speaker, speakers)
    lo, hi = _bounds(_of_sum(num, den, _draws(speakers, draws, seed)), level)
    value = _of_sum(num, den)
    figures = {name: None if den[:, j].sum() == 0 else
               {"value": _rounded(value[j]), "low": _rounded(lo[j]), "high": _rounded(hi[j])}
               for j, name in enumerate(names)}
    return {"speakers": len(speakers), "draws": draws, "level": level, "figures": figures}


def _runs(side: Mapping[str, dict] | Sequence[Mapping[str, dict]]) -> list[Mapping[str, dict]]:
    """One report's per-speaker blocks, or several runs' (seeds of one recipe), as a list."""
    runs = [side] if isinstance(side, Mapping) else list(side)
    if not runs:
        raise ValueError("a side of the comparison has no report")
    return runs


def _run_means(num: np.ndarray, draws: int, rng: np.random.Generator) -> np.ndarray:
    """Per draw, the runs (axis 0 of ``num``) drawn with replacement and averaged:
    ``(draws, speakers, figures)``. One run is always itself."""
    picks = rng.integers(0, len(num), (draws, len(num)))
    return num[picks].mean(axis=1)


def paired(a: Mapping[str, dict] | Sequence[Mapping[str, dict]],
           b: Mapping[str, dict] | Sequence[Mapping[str, dict]], *, draws: int = DRAWS,
           level: float = LEVEL, seed: int = 0) -> dict:
    """Figure by figure, ``b`` minus ``a`` on the same speakers, with the ``level``
    bootstrap interval of that difference (both resampled with the same draw of speakers).

    Either side may be several runs of one recipe (seeds, each a report's per-speaker
    blocks on the same calls): its figure is then the mean over its runs, and each draw also
    resamples each side's runs with replacement, so the interval holds the seeds' spread as
    well as the speakers'. With one run per side that draw is the run itself.

    Raises:
        ValueError: the reports are not on the same speakers, or not on the same calls
            (different calm hours or numbers of target calls for a speaker).
    """
    runs_a, runs_b = _runs(a), _runs(b)
    speakers = sorted(runs_a[0])
    for i, run in enumerate(runs_a + runs_b):
        if set(run) != set(speakers):
            only_a, only_b = sorted(set(speakers) - set(run)), sorted(set(run) - set(speakers))
            which = "the second" if len(runs_a) == len(runs_b) == 1 else f"report {i + 1}"
            raise ValueError(f"the reports are on different speakers: only in the first "
                             f"{only_a or 'none'}, only in {which} {only_b or 'none'}")
    if not speakers:
        raise ValueError("no speakers to resample")
    arrays = [_arrays(run, speakers) for run in runs_a + runs_b]
    names, _, den = arrays[0]
    for other_names, _, other_den in arrays[1:]:
        if other_names != names:
            raise ValueError(f"the reports give different figures: {names} and {other_names}")
        if not np.allclose(den, other_den, atol=0.002):
            bad = sorted({speakers[i]
                          for i in np.nonzero(~np.isclose(den, other_den, atol=0.002))[0]})
            raise ValueError("the reports were not run on the same calls (calm hours or "
                             f"target calls differ for {', '.join(bad)}): a paired comparison "
                             "needs the same benchmark (same corpora, speakers, --calm-minutes "
                             "and seed)")
    num_a = np.stack([n for _, n, _ in arrays[: len(runs_a)]])
    num_b = np.stack([n for _, n, _ in arrays[len(runs_a):]])
    idx = _draws(speakers, draws, seed)
    rng = np.random.default_rng(seed + 1)
    mean_a, mean_b = _run_means(num_a, draws, rng), _run_means(num_b, draws, rng)
    lo, hi = _bounds(_of_sum(mean_b, den, idx) - _of_sum(mean_a, den, idx), level)
    va, vb = _of_sum(num_a.mean(axis=0), den), _of_sum(num_b.mean(axis=0), den)
    figures = {name: None if den[:, j].sum() == 0 else
               {"first": _rounded(va[j]), "second": _rounded(vb[j]),
                "difference": _rounded(vb[j] - va[j]), "low": _rounded(lo[j]),
                "high": _rounded(hi[j])}
               for j, name in enumerate(names)}
    return {"speakers": len(speakers), "runs": [len(runs_a), len(runs_b)], "draws": draws,
            "level": level, "figures": figures}


def report_channels(report: dict) -> list[str]:
    """The channels a report has figures for: a ``callmon calibrate`` report's test channels,
    or the one channel of a ``callmon bench alerts`` report."""
    if "test" in report:
        return list(report["test"])
    if "per_speaker" in report:
        return ["telephone" if str(report.get("channel", "")).startswith("telephone") else "clean"]
    raise ValueError("not a report of callmon calibrate or callmon bench alerts "
                     "(no 'test' or 'per_speaker' block)")


def per_speaker_blocks(report: dict, channel: str) -> dict[str, dict]:
    """The per-speaker blocks of a ``callmon calibrate`` report (its nested test figures on
    ``channel``) or of a ``callmon bench alerts`` report (its one channel)."""
    channels = report_channels(report)
    if "test" in report:
        if channel not in channels:
            raise ValueError(f"the report has no {channel!r} test calls "
                             f"(it has {', '.join(channels)})")
        return report["test"][channel]["per_speaker"]
    if channels != [channel]:
        raise ValueError(f"the report is of {channels[0]} calls, not {channel}")
    return report["per_speaker"]


def label(name: str) -> str:
    """A figure's name as a person reads it."""
    if name.endswith("_false_alerts_per_hour"):
        return f"{name.removesuffix('_false_alerts_per_hour')} false alerts / h"
    key = name.removesuffix("_detection_rate")
    return f"{key.replace('_', ' ')} in time"


def _show(name: str, x: float | None) -> str:
    if x is None:
        return "–"
    return f"{x:.2f}" if name.endswith("per_hour") else f"{100 * x:.0f} %"


def figure_text(name: str, f: dict) -> str:
    """A figure of :func:`intervals` with its interval, as a person reads it."""
    return f"{_show(name, f['value'])} [{_show(name, f['low'])}, {_show(name, f['high'])}]"


def difference_text(name: str, f: dict) -> tuple[str, str]:
    """A difference of :func:`paired` and its interval, as a person reads them."""
    d, lo, hi = f["difference"], f["low"], f["high"]
    if name.endswith("per_hour"):
        return f"{d:+.2f}", f"[{lo:+.2f}, {hi:+.2f}]"
    return f"{100 * d:+.0f} pts", f"[{100 * lo:+.0f}, {100 * hi:+.0f}]"


def interval_line(block: dict) -> str:
    """One sentence a person reads: each figure with its interval."""
    parts = [f"{label(n)} {figure_text(n, f)}"
             for n, f in block["figures"].items() if f is not None]
    return (f"{100 * block['level']:.0f} % intervals, bootstrap over the {block['speakers']} "
            f"speaker{'s' if block['speakers'] != 1 else ''} "
            f"({block['draws']} draws, each corpus resampled within itself): " + "; ".join(parts))


def paired_rows(block: dict, first: str, second: str) -> list[str]:
    """A Markdown table of a :func:`paired` comparison."""
    lines = [f"| figure | {first} | {second} | difference | {100 * block['level']:.0f} % interval |",
             "|---|---|---|---|---|"]
    for name, f in block["figures"].items():
        if f is None:
            continue
        diff, span = difference_text(name, f)
        lines.append(f"| {label(name)} | {_show(name, f['first'])} | "
                     f"{_show(name, f['second'])} | {diff} | {span} |")
    return lines
