"""`python -m bus`: the `bus` command (the one place the library reaches the services that
run it, and only when run as a program)."""

from services.cli import main

main()
