"""Every timing-based deploy choice, under one rule: which runtime runs an artifact at batch 256 and 1
(`choose_runtime`), which graph ONNX Runtime loads (`tune_onnxruntime`) and which INT8 mode ships
(`choose_mode`). Candidates are timed side by side on calibration images, 1 thread, interleaved round by
round (measure/latency.py), and what each batch deploys is recorded in the results row (`deployed_runtime`,
`deployed_runtime_b1`, `int8_mode`, `notes`).

The rule: an incumbent (the dense ONNX Runtime model; the file's own graph; INT8 weights decoded for FP32
compute) is kept unless a challenger is faster by more than the noise measured in the same run (`Lead`):
ahead by more than `[measure] choice_margin` in three of every four paired rounds (round r of both ran in
the same interleaved round, so load that hits one hits both), and by a median lead beyond the spread of the
incumbent's own rounds (their median absolute deviation); the INT8 mode, which ships one file for every
batch size, at both batch sizes. The margin is 10 % by default: under a process spinning beside a study,
the same two candidates' ratio moved by 5 % or more from one run to the next (a rewrite 7 % slower than
the file's graph at batch 1 in one run measured 4 % slower in the next and 14 % in a third), so a lead of
a few percent is noise. A fixed margin alone could not absorb a shared
machine's run-to-run noise: two runs of one study beside a spinning process shipped a LeNet-300-100 on ONNX
Runtime in one and OpenVINO in the other (5 % apart). When the challenger's lead is not clear, the notes say
"tied within noise".
"""

import statistics
from collections.abc import Collection, Mapping, MutableMapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import onnx
import torch

from deepshrink import quiet
from deepshrink.errors import UserError
from deepshrink.export.base import DEFAULT_MARGIN
from deepshrink.export.runtimes import OrtRunner
from deepshrink.export.runtimes.conv_pool import find_pairs
from deepshrink.measure.latency import RunnerFactory, pinned, time_passes, time_singles

BATCH = 256
# One batch per timed pass, thirty passes per runner, interleaved. A short pass is preempted by another
# job less often than a long one, so more of the passes are clean; a pass is a few ms, so thirty cost little.
IMAGES = 256
REPEATS = 30
# Single calls: cheap (a few µs each), so many, interleaved in short chunks (a round is one chunk per runner):
# in chunks of 50 a slow stretch of the machine landed on one runner, and an mlp-50's full INT8 timed 9.1 µs
# in one study and 13.7 µs in the next.
SINGLES = 600
SINGLE_CHUNK = 10
# A runtime over this many times the fastest after a few rounds is timed no more (latency.py `_racing`):
# it cannot win, and a hopeless one (PyTorch's fp16 on a CPU) cost 90 % of a choice's time.
HOPELESS = 3.0
MIN_ROUNDS = 8  # paired rounds a lead needs before it counts: three, as a race leaves a runner, say little

Rounds = dict[int, dict[str, list[float]]]  # batch -> candidate -> µs per image per round, rounds paired


def check_margin(margin: float, where: str = "choice_margin") -> float:
    if not 0.0 <= margin < 1.0:
        raise UserError(f"{where}: must be >= 0 and < 1 (a fraction of the incumbent's time), got {margin}")
    return margin


def calib_images(calib: np.ndarray, n: int = IMAGES) -> np.ndarray:
    """`n` images cycled from the calibration set (512 training images in a study)."""
    return np.resize(calib, (n, *calib.shape[1:]))


def _chunk_medians(calls: list[float]) -> list[float]:
    """The median of each round's chunk of batch-1 calls: one value per round, paired across runners."""
    return [statistics.median(calls[i : i + SINGLE_CHUNK]) for i in range(0, len(calls), SINGLE_CHUNK)]


def time_runtimes(runners: Mapping[str, RunnerFactory], x: np.ndarray, keep: Collection[str] = ()) -> Rounds:
    """Per batch (256 and 1), each runner's µs per image in every interleaved round, 1 thread: the batched
    passes (each led by an untimed batch, in a shuffled order per round) and the chunks of single calls. A
    runner far behind the fastest leaves the race after a few rounds, except those in `keep` (the incumbent:
    every challenger is judged on the rounds it shares with it)."""
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with quiet.quiet(), pinned(1):  # in a study, no other worker trains or times meanwhile
            made = {k: f(1, "cpu") for k, f in runners.items()}
            xs = dict.fromkeys(made, x)
            batched = time_passes(made, xs, BATCH, REPEATS, drop_above=HOPELESS, keep=keep)
            single = time_singles(made, xs, SINGLES, chunk=SINGLE_CHUNK, drop_above=HOPELESS, keep=keep)
    finally:
        torch.set_num_threads(prev)
    return {BATCH: batched, 1: {k: _chunk_medians(v) for k, v in single.items()}}


def medians(rounds: Rounds) -> dict[int, dict[str, float]]:
    return {b: {k: statistics.median(v) for k, v in t.items()} for b, t in rounds.items()}


@dataclass(frozen=True)
class Lead:
    """A challenger against the incumbent at one batch size, from their paired rounds."""

    challenger_us: float
    incumbent_us: float
    wins: int  # rounds in which the challenger was faster by more than the margin
    rounds: int
    spread: float  # the incumbent's own rounds' median absolute deviation, as a fraction of its median
    lower: float  # the challenger's lead in its worst quarter of rounds (25th percentile), fraction of the incumbent

    @property
    def lead(self) -> float:
        """The challenger's median lead, as a fraction of the incumbent's time (negative: slower)."""
        return 1.0 - self.challenger_us / self.incumbent_us if self.incumbent_us > 0 else -np.inf

    def clear(self, margin: float) -> bool:
        """Faster by more than `margin` in three rounds of four (of at least MIN_ROUNDS), and by more than the
        incumbent's own spread."""
        return self.rounds >= MIN_ROUNDS and self.lower > margin and self.lead > self.spread

    def says(self) -> str:
        return (f"{self.challenger_us:.3g} vs {self.incumbent_us:.3g} µs, ahead by the margin in {self.wins}/"
                f"{self.rounds} rounds, noise {self.spread:.1%}")


def lead(challenger: list[float], incumbent: list[float], margin: float = DEFAULT_MARGIN) -> Lead:
    """The challenger's lead over the rounds both ran (a runner dropped from the race ran fewer)."""
    n = min(len(challenger), len(incumbent))
    leads = [1.0 - c / i if i > 0 else -np.inf for c, i in zip(challenger[:n], incumbent[:n], strict=True)]
    mid = statistics.median(incumbent)
    # The median absolute deviation, not the interquartile range: on a loaded machine over a quarter of the
    # rounds can be preempted, which blew an INT8 model's range up to 5x its median while its median held.
    mad = statistics.median(abs(v - mid) for v in incumbent)
    lower = statistics.quantiles(leads, n=4)[0] if n > 1 else leads[0]
    return Lead(statistics.median(challenger), mid, sum(x > margin for x in leads), n,
                mad / mid if mid > 0 else 0.0, lower)


@dataclass(frozen=True)
class Decision:
    """What a choice kept or took, and against what: the leads over the incumbent, per batch, of `rival` (the
    challenger chosen, or, when the incumbent stays, the one closest to winning)."""

    chosen: str
    incumbent: str
    rival: str | None
    leads: dict[int, Lead]

    @property
    def tied(self) -> bool:
        """The incumbent stayed while the rival's median was ahead at every batch: not by more than the noise."""
        return self.chosen == self.incumbent and bool(self.leads) and all(v.lead > 0 for v in self.leads.values())


def decide(rounds: Rounds, incumbent: str, margin: float) -> Decision:
    """The challenger clearly faster at every batch in `rounds` with the largest lead at the first (256, the
    study's method), else the incumbent; the rival reported beside the incumbent is the challenger closest to
    winning. A choice made per batch passes one batch's rounds."""
    check_margin(margin)
    leads = {k: {b: lead(t[k], t[incumbent], margin) for b, t in rounds.items() if k in t}
             for k in next(iter(rounds.values())) if k != incumbent}
    leads = {k: v for k, v in leads.items() if len(v) == len(rounds)}
    if not leads:
        return Decision(incumbent, incumbent, None, {})
    first = next(iter(rounds))
    clear = [k for k, per in leads.items() if all(v.clear(margin) for v in per.values())]
    if clear:
        chosen = max(clear, key=lambda k: leads[k][first].lead)
        return Decision(chosen, incumbent, chosen, leads[chosen])
    rival = max(leads, key=lambda k: min(v.lead for v in leads[k].values()))
    return Decision(incumbent, incumbent, rival, leads[rival])


def verdict(d: Decision) -> str:
    """`sparse (1.63x onnxruntime: 3.1 vs 5.05 µs, ahead by the margin in 30/30 rounds, noise 1.2%)`; the incumbent
    with its closest rival: `onnxruntime (tied within noise with openvino: ...)`, or where the rival is slower at
    a batch `onnxruntime (kept: openvino 0.68x, ...)`. The ratio is the rival's at its worst batch."""
    if d.rival is None:
        return d.chosen
    said = "; ".join(f"{v.says()}{'' if len(d.leads) == 1 else f' at batch {b}'}" for b, v in d.leads.items())
    ratio = min(v.incumbent_us / v.challenger_us for v in d.leads.values())
    if d.chosen != d.incumbent:
        return f"{d.chosen} ({ratio:.2f}x {d.incumbent}: {said})"
    if d.tied:
        return f"{d.incumbent} (tied within noise with {d.rival}: {said})"
    return f"{d.incumbent} (kept: {d.rival} {ratio:.2f}x, {said})"


def choose_runtime(runners: Mapping[str, RunnerFactory], calib: np.ndarray, reference: str = "onnxruntime",
                   margin: float = DEFAULT_MARGIN) -> dict[str, Any]:
    """Info for the artifact: per batch (256 and 1), the runtime it deploys (`reference`, the dense ONNX
    Runtime model, unless another is clearly faster at that batch), every runtime's µs per image and a note
    saying what was chosen against what."""
    if len(runners) < 2:
        only = next(iter(runners))
        return {"deployed_runtime": only, "deployed_runtime_b1": only}
    ref = reference if reference in runners else next(iter(runners))
    rounds = time_runtimes(runners, calib_images(calib), keep={ref})
    chosen = {b: decide({b: t}, ref, margin) for b, t in rounds.items()}
    info: dict[str, Any] = {"deployed_runtime": chosen[BATCH].chosen, "deployed_runtime_b1": chosen[1].chosen,
                            "deployed_by": f"measured (calibration images, 1 thread, paired rounds; {ref} kept "
                                           f"unless another is faster beyond the noise and {margin:.0%})"}
    for b, t in medians(rounds).items():
        info.update({f"deploy_us_b{b}_{k}": round(v, 3) for k, v in t.items()})
    info["notes"] = (f"deployed: {verdict(chosen[BATCH])} at batch {BATCH}, {verdict(chosen[1])} at batch 1")
    return info


def tune_onnxruntime(runners: MutableMapping[str, RunnerFactory], calib: np.ndarray,
                     margin: float = DEFAULT_MARGIN) -> dict[str, Any]:
    """The graph ONNX Runtime runs for an artifact, per batch size: its file as written, or with its first k
    conv + max-pool pairs as polyphase convolutions (runtimes/conv_pool.py), timed side by side like the
    runtimes. At each batch the file's own graph is kept unless a rewrite is clearly faster there (a rewrite
    1.9x faster at batch 256 is often level at batch 1); the choice replaces the `onnxruntime` runner, so every
    later timing and the accuracy run use it (empty info: nothing to rewrite)."""
    ort = runners.get("onnxruntime")
    if not isinstance(ort, OrtRunner):
        return {}
    model = ort.loaded()
    n = len(find_pairs(onnx.load_from_string(model) if isinstance(model, bytes) else onnx.load(model)))
    if not n:
        return {}
    candidates = {str(k): replace(ort, fused=k) for k in range(n + 1)}
    rounds = time_runtimes(candidates, calib_images(calib), keep={"0"})
    d = {b: decide({b: t}, "0", margin) for b, t in rounds.items()}
    runners["onnxruntime"] = replace(ort, fused=int(d[BATCH].chosen), fused_b1=int(d[1].chosen))
    mid = medians(rounds)
    info: dict[str, Any] = {"ort_conv_pool_pairs": n, "ort_conv_pool_fused": int(d[BATCH].chosen),
                            "ort_conv_pool_fused_b1": int(d[1].chosen)}
    info.update({f"ort_conv_pool_us_b{b}_{k}": round(v, 3) for b, t in mid.items() for k, v in t.items()})
    said = [f"{d[b].chosen} at batch {b} ({mid[b]['0'] / mid[b][d[b].chosen]:.2f}x the file's own graph"
            f"{', tied within noise' if d[b].tied else ''})" for b in (BATCH, 1)]
    info["notes"] = (f"onnxruntime runs {' and '.join(said)} of {n} conv + max-pool pairs as polyphase convolutions "
                     "(the file's graph kept at a batch unless a rewrite is faster there beyond the noise)")
    return info


def _fastest(rounds: Rounds, groups: Mapping[str, list[str]]) -> Rounds:
    """Each group (an INT8 mode's runtimes) as its fastest member at each batch, by median."""
    out: Rounds = {}
    for b, t in rounds.items():
        out[b] = {g: t[min((k for k in ks if k in t), key=lambda k: statistics.median(t[k]))]
                  for g, ks in groups.items()}
    return out


def choose_mode(candidates: Mapping[str, Mapping[str, RunnerFactory]], calib: np.ndarray, incumbent: str,
                margin: float, fp32: RunnerFactory | None = None) -> tuple[str, dict[str, Any]]:
    """The INT8 mode that ships: every mode timed in each of its runtimes side by side (with FP32 for the
    speedups), each mode as fast as its fastest runtime; the incumbent stays unless another mode is clearly
    faster at both batches (one file ships for both)."""
    runners = {f"{m}/{rt}": f for m, rts in candidates.items() for rt, f in rts.items()}
    if fp32 is not None:
        runners["fp32"] = fp32
    rounds = time_runtimes(runners, calib_images(calib), keep={f"{incumbent}/{rt}" for rt in candidates[incumbent]})
    modes = _fastest(rounds, {m: [f"{m}/{rt}" for rt in rts] for m, rts in candidates.items()})
    d = decide(modes, incumbent, margin)
    us, mode_us = medians(rounds), medians(modes)
    info: dict[str, Any] = {f"int8_us_b{b}_{k.replace('/', '_')}": round(v, 3)
                            for b, t in us.items() for k, v in t.items()}
    if fp32 is not None:
        for b, t in us.items():
            info[f"int8_speedup_vs_fp32_b{b}"] = round(t["fp32"] / mode_us[b][d.chosen], 3)
    info["int8_mode_rival"] = (d.incumbent if d.chosen != d.incumbent else d.rival) or ""
    said = f"int8 mode {verdict(d)}"
    if fp32 is not None:
        said += (f"; {info[f'int8_speedup_vs_fp32_b{BATCH}']:.2f}x FP32 at batch {BATCH}, "
                 f"{info['int8_speedup_vs_fp32_b1']:.2f}x at batch 1")
    info["notes"] = f"{said} ({incumbent} kept unless another mode is faster beyond the noise at both batches)"
    return d.chosen, info
