#!/usr/bin/python3
"""Plot Tessera training curves from one or more metrics.jsonl files.

    python3 tools/plot_metrics.py runs/a/metrics.jsonl [runs/b/metrics.jsonl ...] -o curves.png
    python3 tools/plot_metrics.py runs/a runs/b -o curves.png   # run folders: their metrics.jsonl

Draws a 2 x 2 grid: training loss and accuracy (or MAE, for regression runs) against the step (top
row) and against wall time since the start of the run (bottom row). Lines are the "train" records
(means over each log window); markers joined by a dashed line are the "eval" records. Each run has
one colour and is labelled with its folder name, so several runs overlay on the same axes. A
resumed run's "restart" record supersedes the records of later steps written before it (a run
killed between checkpoints trained them again), and its times continue the earlier segment's. A
record a kill cut short in mid-write is skipped, with a note.

Needs Debian's matplotlib (apt-get install python3-matplotlib), i.e. /usr/bin/python3; run with
another python3 (pyenv) it re-executes itself under /usr/bin/python3. Renders with Agg (no display).

Exit codes: 0 written; 2 bad input (missing, empty or malformed file, bad arguments, unwritable
output); 1 other errors.
"""

import argparse
import json
import math
import os
import re
import sys

SYSTEM_PYTHON = "/usr/bin/python3"
PROG = "plot_metrics"


def fail(message):
    """One line on stderr, exit 2 (bad input), as the Tessera programs do."""
    print(f"{PROG}: error: {message}", file=sys.stderr)
    sys.exit(2)


def import_matplotlib():
    try:
        import matplotlib
    except ImportError:
        # `python3` may be a pyenv interpreter without Debian's packages: retry under Debian's.
        if (os.path.realpath(sys.executable) != os.path.realpath(SYSTEM_PYTHON)
                and os.access(SYSTEM_PYTHON, os.X_OK)
                and not os.environ.get("PLOT_METRICS_REEXEC")):
            os.environ["PLOT_METRICS_REEXEC"] = "1"
            os.execv(SYSTEM_PYTHON, [SYSTEM_PYTHON, os.path.abspath(__file__)] + sys.argv[1:])
        print(f"{PROG}: error: matplotlib is not installed for {sys.executable} "
              "(apt-get install python3-matplotlib, then run with /usr/bin/python3)",
              file=sys.stderr)
        sys.exit(1)
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


class Parser(argparse.ArgumentParser):
    def error(self, message):
        fail(f"{message} (see --help)")


class Run:
    """The train and eval records of one metrics file."""

    def __init__(self, path, label):
        self.path = path
        self.label = label
        self.train = []  # dicts with step, time, loss, metric
        self.eval = []
        self.metric = None  # "accuracy" or "mae"
        self.split = None


METRICS = ("accuracy", "mae")
REQUIRED = ("step", "loss", "time")
NON_FINITE = re.compile(r'(:\s*)(-?nan|-?inf)\b', re.IGNORECASE)
JSON_NON_FINITE = {"nan": "NaN", "-nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}


def load(path, label):
    run = Run(path, label)
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.readlines()
    except FileNotFoundError:
        fail(f"{path}: no such file")
    except IsADirectoryError:
        fail(f"{path}: is a directory with no metrics.jsonl")
    except (OSError, UnicodeDecodeError) as e:
        fail(f"{path}: cannot read: {e}")
    offset = 0.0  # seconds before the current segment (a resumed run starts its clock again)
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line:
            continue
        # fmt writes a diverged loss as nan/inf, which JSON lacks; read them as NaN/Infinity.
        line = NON_FINITE.sub(lambda m: m.group(1) + JSON_NON_FINITE[m.group(2).lower()], line)
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            if line.startswith("{") and not line.endswith("}"):
                # A record a kill cut short in mid-write (Tessera's own reading drops it too).
                print(f"{PROG}: note: {path}:{number}: a record cut short (as by a kill in "
                      "mid-write): skipped", file=sys.stderr)
                continue
            fail(f"{path}:{number}: not valid JSON ({e.msg} at column {e.colno})")
        if not isinstance(record, dict):
            fail(f"{path}:{number}: not a JSON object")
        kind = record.get("kind")
        if kind == "restart":
            # A resumed run: the steps after its checkpoint's were trained again, and the records
            # of the run that was stopped or killed beyond it are superseded. Its clock starts
            # at 0: its times continue from the last record kept.
            step = record.get("step")
            if isinstance(step, bool) or not isinstance(step, (int, float)):
                fail(f"{path}:{number}: restart record has a non-numeric step ({step!r})")
            run.train = [p for p in run.train if p["step"] <= step]
            run.eval = [p for p in run.eval if p["step"] <= step]
            offset = max([p["time"] for p in run.train + run.eval] + [0.0])
            continue
        if kind not in ("train", "eval"):
            continue  # "stop" and kinds added later are not plotted
        missing = [k for k in REQUIRED if k not in record]
        metric = next((m for m in METRICS if m in record), None)
        if metric is None:
            missing.append("accuracy or mae")
        if missing:
            fail(f"{path}:{number}: {kind} record lacks {', '.join(missing)}")
        values = {}
        for key in REQUIRED + (metric,):
            value = record[key]
            if value is None and key != "step":
                value = math.nan  # JSON has no NaN: Tessera writes a diverged value as null
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                fail(f"{path}:{number}: {kind} record has a non-numeric {key} ({value!r})")
            values[key] = float(value)
        if run.metric is None:
            run.metric = metric
        elif run.metric != metric:
            fail(f"{path}:{number}: {kind} record has {metric} "
                 f"but earlier records have {run.metric}")
        point = {"step": values["step"], "time": offset + values["time"], "loss": values["loss"],
                 "metric": values[metric]}
        if kind == "train":
            run.train.append(point)
        else:
            run.eval.append(point)
            run.split = run.split or str(record.get("split", "test"))
    if not run.train and not run.eval:
        fail(f"{path}: no train or eval records (empty file, or not a Tessera metrics.jsonl)")
    return run


def resolve(arg):
    """A metrics file, or a run folder holding metrics.jsonl."""
    if os.path.isdir(arg):
        return os.path.join(arg, "metrics.jsonl")
    return arg


def labels_for(paths):
    """Run folder names; where two runs share a name, prefix the folder above it."""
    def tail(path, parts):
        folder = os.path.dirname(os.path.abspath(path))
        names = []
        for _ in range(parts):
            folder, name = os.path.split(folder)
            if not name:
                break
            names.append(name)
        return "/".join(reversed(names)) or os.path.basename(path)

    labels = [tail(p, 1) for p in paths]
    for parts in (2, 3, 4):
        if len(set(labels)) == len(labels):
            break
        labels = [tail(p, parts) if labels.count(labels[i]) > 1 else labels[i]
                  for i, p in enumerate(paths)]
    # Still ambiguous (the same file twice): number them.
    seen = {}
    out = []
    for label in labels:
        seen[label] = seen.get(label, 0) + 1
        out.append(label if labels.count(label) == 1 else f"{label} #{seen[label]}")
    return out


def time_unit(seconds):
    if seconds >= 2 * 3600:
        return 3600.0, "h"
    if seconds >= 10 * 60:
        return 60.0, "min"
    return 1.0, "s"


def plot(runs, output, title, dpi):
    plt = import_matplotlib()
    from matplotlib.lines import Line2D

    metric = runs[0].metric
    if any(r.metric != metric for r in runs):
        mixed = ", ".join(f"{r.label}: {r.metric}" for r in runs)
        fail(f"the runs mix classification and regression metrics ({mixed}); plot them separately")
    percent = metric == "accuracy"
    metric_label = "accuracy (%)" if percent else "MAE"
    scale = 100.0 if percent else 1.0

    t_max = max([p["time"] for r in runs for p in r.train + r.eval] + [0.0])
    t_div, t_name = time_unit(t_max)

    fig, axes = plt.subplots(2, 2, figsize=(13, 8.5), squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    if len(runs) > len(colours):
        cmap = plt.get_cmap("tab20")
        colours = [cmap(i % 20) for i in range(len(runs))]

    panels = [  # (row, column, x key, y key)
        (0, 0, "step", "loss"), (0, 1, "step", "metric"),
        (1, 0, "time", "loss"), (1, 1, "time", "metric"),
    ]
    for row, col, xkey, ykey in panels:
        ax = axes[row][col]
        for i, run in enumerate(runs):
            colour = colours[i % len(colours)]

            def xs(points):
                return [p[xkey] / (t_div if xkey == "time" else 1.0) for p in points]

            def ys(points):
                return [p[ykey] * (scale if ykey == "metric" else 1.0) for p in points]

            if run.train:
                ax.plot(xs(run.train), ys(run.train), "-", color=colour, linewidth=1.6)
            if run.eval:
                ax.plot(xs(run.eval), ys(run.eval), "--o", color=colour, linewidth=1.0,
                        markersize=6, markeredgecolor="black", markeredgewidth=0.6)
        ax.set_xlabel("step" if xkey == "step" else f"wall time ({t_name})")
        ax.set_ylabel("loss" if ykey == "loss" else metric_label)
        ax.grid(True, alpha=0.3)
        values = [p[ykey] for r in runs for p in r.train + r.eval]
        if ykey == "loss" and values and min(values) > 0 and max(values) / min(values) > 30:
            ax.set_yscale("log")
        against = "step" if xkey == "step" else "wall time"
        ax.set_title(f"{'loss' if ykey == 'loss' else metric_label.split(' ')[0]} vs {against}")

    splits = sorted({r.split.rsplit(":", 1)[-1].strip("/") for r in runs if r.split})
    eval_name = f"eval ({', '.join(splits)})" if splits else "eval"
    handles = [Line2D([], [], color=colours[i % len(colours)], linewidth=3, label=r.label)
               for i, r in enumerate(runs)]
    handles += [
        Line2D([], [], color="grey", linestyle="-", label="train (log-window mean)"),
        Line2D([], [], color="grey", linestyle="--", marker="o", markeredgecolor="black",
               label=eval_name),
    ]
    fig.legend(handles=handles, loc="upper center", ncol=min(len(handles), 6),
               frameon=False, bbox_to_anchor=(0.5, 0.965))
    fig.suptitle(title or ("Tessera training curves: " + ", ".join(r.label for r in runs)),
                 fontsize=13, y=0.995)
    fig.tight_layout(rect=(0, 0, 1, 0.935))
    try:
        fig.savefig(output, dpi=dpi)
    except (OSError, ValueError) as e:
        fail(f"{output}: cannot write the figure: {e}")
    plt.close(fig)


def main(argv):
    ap = Parser(prog="plot_metrics.py",
                description="Plot training loss and accuracy/MAE from Tessera metrics.jsonl files "
                            "against step and wall time; one colour per run.")
    ap.add_argument("metrics", nargs="+",
                    help="metrics.jsonl files (or run folders that hold one)")
    ap.add_argument("-o", "--output", default="curves.png",
                    help="image to write; the suffix picks the format (default: curves.png)")
    ap.add_argument("--title", default=None, help="figure title")
    ap.add_argument("--dpi", type=int, default=110, help="resolution (default: 110)")
    args = ap.parse_args(argv)
    if args.dpi <= 0:
        fail(f"--dpi must be positive, got {args.dpi}")

    paths = [resolve(a) for a in args.metrics]
    labels = labels_for(paths)
    runs = [load(p, label) for p, label in zip(paths, labels)]
    for run in runs:
        if not all(math.isfinite(p[k]) for p in run.train + run.eval for k in ("step", "time")):
            fail(f"{run.path}: a record has a non-finite step or time")
    plot(runs, args.output, args.title, args.dpi)
    summary = []
    for run in runs:
        last = run.eval[-1] if run.eval else None
        if last is None:
            summary.append(f"{run.label}: {len(run.train)} train records")
        elif run.metric == "accuracy":
            summary.append(f"{run.label}: last eval {100.0 * last['metric']:.2f}% "
                           f"at step {int(last['step'])}")
        else:
            summary.append(f"{run.label}: last eval MAE {last['metric']:.4g} "
                           f"at step {int(last['step'])}")
    print(f"wrote {args.output} ({'; '.join(summary)})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
