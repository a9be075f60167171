"""Test settings: Hypothesis without wall-clock limits (the machine is shared and noisy)."""

from hypothesis import HealthCheck, settings

settings.register_profile(
    "bus", deadline=None, suppress_health_check=[HealthCheck.too_slow], max_examples=200
)
settings.load_profile("bus")
