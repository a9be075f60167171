"""`bus soak`'s growth verdict on synthetic series: it fails on leaks and only on leaks.

Each series is sampled as the soak samples (every 10 s, server restarts every 40 s), with
noise, and with the spike a restart brings (reconnecting clients, requests piling up)."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest

from services.soak.figures import Sample, growth, theil_sen, trend

EVERY = 10.0  # seconds between samples
RESTART_EVERY = 40.0


def series(
    minutes: float,
    rss: Callable[[float], float],
    fds: Callable[[float], float] = lambda t: 40,
    *,
    spikes: bool = True,
    seed: int = 1,
) -> list[Sample]:
    """Samples of one service "svc" whose RSS (MB) and open files follow `rss(t)`, `fds(t)`,
    with noise; with `spikes`, the sample after each restart is well above the rest."""
    rng = random.Random(seed)
    out = []
    for k in range(1, int(minutes * 60 / EVERY) + 1):
        t = k * EVERY
        restarts = int(t // RESTART_EVERY)
        spiked = spikes and k > 1 and restarts != int((t - EVERY) // RESTART_EVERY)
        out.append(
            Sample(
                t=t,
                restarts=restarts,
                published=0,
                acknowledged=0,
                refused=0,
                stored=None,
                consumer_pending=None,
                consumer_ack_pending=None,
                projection_lag=None,
                dead_letters=None,
                rss_mb={"svc": rss(t) + rng.uniform(-0.5, 0.5) + (25 if spiked else 0)},
                fds={"svc": round(fds(t) + rng.choice((-1, 0, 0, 1)) + (30 if spiked else 0))},
            )
        )
    return out


def per_hour(amount: float) -> Callable[[float], float]:
    return lambda t: amount * t / 3600


@pytest.mark.parametrize("minutes", [4, 30])
def test_flat_with_restart_spikes_passes(minutes: float) -> None:
    text, grew = growth(series(minutes, lambda t: 96), "svc")
    assert not grew, text


@pytest.mark.parametrize("minutes", [4, 30])
@pytest.mark.parametrize("at", [0.4, 0.6, 0.9])
def test_a_one_off_step_passes(minutes: float, at: float) -> None:
    """RSS and open files jump once (a cache filled, a pool grew), early or late."""
    moment = minutes * 60 * at
    text, grew = growth(
        series(
            minutes,
            lambda t: 96 + (12 if t > moment else 0),
            lambda t: 34 + (14 if t > moment else 0),
        ),
        "svc",
    )
    assert not grew, text


@pytest.mark.parametrize(("minutes", "mb_per_hour"), [(4, 100), (30, 15)])
def test_growth_too_small_for_the_run_to_tell_passes(minutes: float, mb_per_hour: float) -> None:
    """Growth a bounded cache filling would show (it grows by less than a tenth of the
    service within the run): a short run does not call it a leak."""
    leak = per_hour(mb_per_hour)
    text, grew = growth(series(minutes, lambda t: 56 + leak(t)), "svc")
    assert not grew, text


def test_warming_up_then_flat_passes() -> None:
    """Growth that levels off within the first quarter (bounded caches filling)."""
    text, grew = growth(series(4, lambda t: 96 + 10 * min(1.0, t / 50)), "svc")
    assert not grew, text


@pytest.mark.parametrize(("minutes", "mb_per_hour"), [(4, 600), (30, 60), (120, 15)])
def test_a_memory_leak_fails(minutes: float, mb_per_hour: float) -> None:
    """A leak of N MB an hour on a 96 MB process: a short run tells a fast one, a long run a
    slower one."""
    leak = per_hour(mb_per_hour)
    text, grew = growth(series(minutes, lambda t: 96 + leak(t)), "svc")
    assert grew, text


@pytest.mark.parametrize(("minutes", "kept"), [(15, 1), (4, 3)])
def test_descriptors_kept_at_every_restart_fail(minutes: float, kept: int) -> None:
    """A staircase: `kept` more open files after each restart."""
    files = lambda t: 34 + kept * (t // RESTART_EVERY)  # noqa: E731
    text, grew = growth(series(minutes, lambda t: 96, files), "svc")
    assert grew, text
    assert "fds" in text


def test_too_few_samples_tell_nothing() -> None:
    text, grew = growth(series(1, lambda t: 96 + t), "svc")
    assert not grew
    assert "too few" in text


def test_a_service_missing_from_the_samples_tells_nothing() -> None:
    text, grew = growth(series(4, lambda t: 96), "other")
    assert not grew
    assert "too few" in text


def test_theil_sen_ignores_outliers_and_bounds_the_slope() -> None:
    points = [(float(t), 2.0 * t) for t in range(20)]
    points[5] = (5.0, 1000.0)
    points[12] = (12.0, -1000.0)
    slope, low, high = theil_sen(points)
    assert slope == pytest.approx(2.0)
    assert low <= 2.0 <= high
    assert theil_sen([(1.0, 5.0)]) == (0.0, 0.0, 0.0)


def test_trend_leaves_out_the_warm_up_and_the_sample_after_each_restart() -> None:
    samples = series(4, lambda t: 96)
    found = trend(samples, lambda s: s.rss_mb.get("svc"))
    assert found is not None
    after_warm_up = [s for s in samples if s.t >= samples[-1].t / 4]
    restarts = {s.restarts for s in after_warm_up}
    assert found.samples < len(after_warm_up)
    assert found.samples >= len(after_warm_up) - len(restarts)
    assert 95 < found.level < 97
