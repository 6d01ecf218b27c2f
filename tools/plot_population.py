#!/usr/bin/python3
"""Plot a Tessera population: every trainer's curves and its hyper-parameter trajectories.

    python3 tools/plot_population.py runs/<name> [-o runs/<name>/population.png]

Reads runs/<name>/trainer-<k>/metrics.jsonl (each trainer's "train" records, as
tools/plot_metrics.py reads them: a resumed trainer's "restart" record supersedes the records of
the steps it trained again) and runs/<name>/population.jsonl (the "state" records a population
writes after every round: each trainer's hyper-parameters). A record a kill cut short in
mid-write is skipped, with a note, as Tessera's restart drops it. Draws the training loss of each trainer against the step (top), and
one panel per hyper-parameter with each trainer's value against the step (a step where a
trainer copied another's model shows as a jump; on a log scale where a hyper-parameter's values
are positive and span more than a factor of 10). One colour per trainer. The image goes into the
run folder unless -o names another file.

Needs Debian's matplotlib (python3-matplotlib). Exit codes: 0 written; 2 bad input.
"""

import argparse
import glob
import importlib.util
import json
import os
import re
import sys


def fail(message):
    print(f"plot_population: {message}", file=sys.stderr)
    sys.exit(2)


def records(path):
    out = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as e:
                if line.startswith("{") and not line.endswith("}"):
                    print(f"plot_population: note: {path}:{number}: a record cut short (as by a "
                          "kill in mid-write): skipped", file=sys.stderr)
                    continue
                fail(f"{path}:{number}: not JSON ({e.msg})")
    return out


def plot_metrics():
    """tools/plot_metrics.py beside this file, as a module: its reading of metrics.jsonl."""
    spec = importlib.util.spec_from_file_location(
        "plot_metrics", os.path.join(os.path.dirname(os.path.abspath(__file__)), "plot_metrics.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def training_curve(folder):
    """A trainer's (step, training loss) points, a restart's superseded ones left out; [] when its
    folder has no metrics.jsonl."""
    metrics = os.path.join(folder, "metrics.jsonl")
    if not os.path.isfile(metrics):
        return []
    run = plot_metrics().load(metrics, os.path.basename(folder))
    return [(p["step"], p["loss"]) for p in run.train if p["loss"] == p["loss"]]  # not NaN


def states(everything, trainer):
    """Trainer `trainer`'s state records, by step."""
    return sorted((s for s in everything if s.get("kind") == "state" and s.get("trainer") == trainer),
                  key=lambda s: s["step"])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="the population's run.output folder")
    parser.add_argument("-o", "--output", help="image to write (default: RUN/population.png)")
    args = parser.parse_args()
    if args.output is None:
        args.output = os.path.join(args.run, "population.png")
    pop_path = os.path.join(args.run, "population.jsonl")
    if not os.path.isfile(pop_path):
        fail(f"{pop_path}: no such file (is {args.run} a population's run.output?)")
    folders = sorted(glob.glob(os.path.join(args.run, "trainer-*")),
                     key=lambda p: int(re.sub(r".*trainer-", "", p)))
    if not folders:
        fail(f"{args.run}: no trainer-<k> folders")
    everything = records(pop_path)
    all_states = [r for r in everything if r.get("kind") == "state"]
    # The hyper-parameters' names: the first record of population.jsonl (a population's, as
    # Tessera writes it since it records them).
    names = []
    for r in everything:
        if r.get("kind") == "population":
            names = [str(n) for n in r.get("hyper", [])]
            break
    count = max([len(s.get("values", [])) for s in all_states] + [0])
    names += [f"hyper-parameter {i}" for i in range(len(names), count)]

    try:
        import matplotlib
    except ImportError:
        fail("needs matplotlib: apt-get install python3-matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1 + count, 1, figsize=(8, 3 * (1 + count)), squeeze=False)
    for k, folder in enumerate(folders):
        curve = training_curve(folder)
        if not curve:
            continue
        axes[0][0].plot([x for x, _ in curve], [y for _, y in curve], label=f"trainer {k}")
        mine = states(everything, k)
        for i in range(count):
            xs = [s["step"] for s in mine if len(s.get("values", [])) > i]
            ys = [s["values"][i] for s in mine if len(s.get("values", [])) > i]
            axes[1 + i][0].step(xs, ys, where="post", label=f"trainer {k}")
    axes[0][0].set_ylabel("training loss")
    axes[0][0].legend(fontsize="small")
    for i in range(count):
        axes[1 + i][0].set_ylabel(names[i])
        values = [s["values"][i] for s in all_states if len(s.get("values", [])) > i]
        if values and min(values) > 0 and max(values) > 10 * min(values):
            axes[1 + i][0].set_yscale("log")
    axes[-1][0].set_xlabel("step")
    fig.tight_layout()
    try:
        fig.savefig(args.output, dpi=100)
    except OSError as e:
        fail(f"{args.output}: cannot write it ({e.strerror})")
    print(f"plot_population: wrote {args.output}")


if __name__ == "__main__":
    main()
