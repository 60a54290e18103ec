"""Reading the simulator's CSV results (shared by plot.py and render.py): every column that
parses as a number is a float, the rest stay text."""
import csv
import os


def read_csv(out, name):
    with open(os.path.join(out, name)) as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        for k, v in list(r.items()):
            try:
                r[k] = float(v)
            except (TypeError, ValueError):
                pass
    return rows
