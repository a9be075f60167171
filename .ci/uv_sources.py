"""uv options for the package sources pip is configured with, so uv installs from what pip sees.

uv reads neither pip.conf nor PIP_* variables; a machine that mirrors packages locally sets
them for pip (extra indexes, wheel folders). Each option's value is the one pip would use:
an environment variable over an [install] setting over a [global] one.

Usage: `python .ci/uv_sources.py VENV_PYTHON` prints e.g.
`--extra-index-url file:///opt/pypi/simple --find-links /opt/wheels` (nothing if none is set).
"""

import ast
import subprocess
import sys

OPTIONS = ("index-url", "extra-index-url", "find-links")
PRECEDENCE = {"global": 1, "install": 2, ":env:": 3}


def main(python: str) -> None:
    listed = subprocess.run(
        [python, "-m", "pip", "config", "list"], capture_output=True, text=True, check=False
    ).stdout
    chosen: dict[str, tuple[int, str]] = {}
    for line in listed.splitlines():
        key, _, value = line.partition("=")
        section, _, option = key.rpartition(".")
        rank = PRECEDENCE.get(section, 0)
        if option in OPTIONS and rank and rank >= chosen.get(option, (0, ""))[0]:
            chosen[option] = (rank, ast.literal_eval(value))
    flags = [
        word
        for option in OPTIONS
        if option in chosen
        for value in chosen[option][1].split()
        for word in (f"--{option}", value)
    ]
    print(" ".join(flags))  # for the shell to split: pip splits these values on spaces too


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else sys.executable)
