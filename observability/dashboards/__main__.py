"""`python -m observability.dashboards`: regenerate deploy/grafana/dashboards/*.json."""

from . import write

for path in write():
    print(path)
