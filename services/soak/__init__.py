"""`bus soak`: the demo under traffic for a long run, with server restarts, then a verdict.

`run` drives it (the server, the services, the loops that restart and sample, the verdict),
`traffic` creates the tasks, `figures` measures and judges (samples, growth, the verdict's
table), `supervised` runs each `bus <verb>` child and reads what it weighs from /proc.
"""

from .figures import render
from .run import parse_duration, run_soak

__all__ = ("parse_duration", "render", "run_soak")
