#!/usr/bin/python3
"""PyTorch peer of inputs/fashion_mlp.toml and inputs/fashion_cnn.toml (CPU, one thread).

    /usr/bin/python3 bench/peers/fashion_torch.py --model mlp              # one epoch, then test
    /usr/bin/python3 bench/peers/fashion_torch.py --model cnn --steps 600 --no-eval
    /usr/bin/python3 bench/peers/fashion_torch.py --model mlp --world 2 --batch 256   # DDP, gloo

Trains the decks' models the way `tessera run` does: batch 128 (the last batch of an epoch is
short, as with data.drop_last = false), a fresh random order every epoch, inputs normalised with
the file's scale/mean/std attributes ((x * scale - mean) / std), SGD with momentum 0.9 and weight
decay on weights only (not biases), lr 0.05 with a cosine schedule after 200 linear warm-up steps
(the formula of src/optim/schedule.cpp), mean softmax cross-entropy. PyTorch's default
initialisation is Tessera's distribution, U(-1/sqrt(fan_in), 1/sqrt(fan_in)), from another RNG.

Reports samples/s over the steady state (steps after --skip, default 20: warm-up of allocators and
oneDNN primitives), timing the whole step (batch gather and normalisation, forward, backward,
update) as Tessera's samples_per_s does; evaluation is not timed. The last line is one JSON object
("kind": "summary") for scripts. --output DIR also writes DIR/metrics.jsonl in Tessera's format,
so that tools/plot_metrics.py can overlay the two.

--world N (N > 1) trains data-parallel with DistributedDataParallel over gloo, as Tessera does
with N ranks: the script starts N worker processes itself (re-executing itself with RANK,
WORLD_SIZE, MASTER_ADDR=127.0.0.1 and a free MASTER_PORT in the environment; no torchrun), each
with --threads threads. Every worker draws the same permutation and takes its contiguous block of
each global batch of --batch samples (rank r: [r*B/N, (r+1)*B/N), the first B mod N ranks one
more, as Tessera's block_range), so the N workers together see exactly the samples one process
sees. A worker's loss is its local cross-entropy sum x N / B (the local mean when the blocks are
equal); DDP averages the gradients over the N workers, so the update is the global batch's mean,
as in Tessera. Only rank 0 prints, writes --output, evaluates (its own copy of the model, with no
communication) and writes the summary, whose samples/s count the global samples. The progress
lines' loss and accuracy are reduced over the workers at each line (inside the timing, as in
Tessera). The parent exits non-zero with a message when a worker fails (and stops the others);
Ctrl-C or SIGTERM to the parent stops the workers, and a worker exits when its parent dies.

Data: data/fashion-mnist.h5 (from `tessera-data import fashion-mnist`) read with h5py (Debian's
python3-h5py, the serial build); without h5py, or with --idx DIR, Debian's IDX files
(/usr/share/datasets/fashion-mnist, package dataset-fashion-mnist) normalised with the same
constants the importer stores, computed from the training images.

Needs Debian's PyTorch (apt-get install python3-torch), i.e. /usr/bin/python3; started by another
python3 (pyenv) it re-executes itself under /usr/bin/python3.
Exit codes: 0 done; 2 bad input (arguments, data file); 1 other errors (with --world: a worker
failed or was killed); 130/143 stopped by SIGINT/SIGTERM.
"""

import argparse
import gzip
import json
import math
import os
import signal
import socket
import struct
import subprocess
import sys
import time

IDX_DIR = "/usr/share/datasets/fashion-mnist"
DEFAULT_DATA = "data/fashion-mnist.h5"
PROG = "fashion_torch"

# The decks' settings (inputs/fashion_{mlp,cnn}.toml).
DECKS = {
    "mlp": {"lr": 0.05, "momentum": 0.9, "weight_decay": 1e-4, "warmup": 200},
    "cnn": {"lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4, "warmup": 200},
}


def fail(message, code=2):
    print(f"{PROG}: error: {message}", file=sys.stderr, flush=True)
    sys.exit(code)


class Parser(argparse.ArgumentParser):
    def error(self, message):
        fail(f"{message} (see --help)")


SYSTEM_PYTHON = "/usr/bin/python3"

try:
    import numpy as np
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
    import torch.distributed as dist
except ImportError as e:
    # `python3` may be a pyenv interpreter without Debian's packages: retry under Debian's.
    if (os.path.realpath(sys.executable) != os.path.realpath(SYSTEM_PYTHON)
            and os.access(SYSTEM_PYTHON, os.X_OK) and not os.environ.get("FASHION_TORCH_REEXEC")):
        os.environ["FASHION_TORCH_REEXEC"] = "1"
        os.execv(SYSTEM_PYTHON, [SYSTEM_PYTHON, os.path.abspath(__file__)] + sys.argv[1:])
    fail(f"{e.name} is not importable by {sys.executable}: install Debian's python3-torch and run "
         "with /usr/bin/python3 (not a pyenv python3)", code=1)


# --- data ---------------------------------------------------------------------------------------

class Split:
    """One split in memory: uint8 images (N, 1, 28, 28), int64 labels, normalisation constants."""

    def __init__(self, x, y, scale, mean, std):
        self.x = torch.from_numpy(np.ascontiguousarray(x, dtype=np.uint8))
        self.y = torch.from_numpy(np.asarray(y, dtype=np.int64))
        # x * scale / std - mean / std, per channel, as Tessera's reader computes it.
        channels = self.x.shape[1]
        self.mul = torch.tensor([scale / s for s in std],
                                dtype=torch.float32).view(1, channels, 1, 1)
        self.sub = torch.tensor([m / s for m, s in zip(mean, std)],
                                dtype=torch.float32).view(1, channels, 1, 1)

    def __len__(self):
        return self.x.shape[0]

    def batch(self, ids):
        x = self.x.index_select(0, ids).to(torch.float32).mul_(self.mul).sub_(self.sub)
        return x, self.y.index_select(0, ids)


def read_h5(path):
    try:
        import h5py
    except ImportError:
        return None
    splits = {}
    try:
        with h5py.File(path, "r") as f:
            for name in ("train", "test"):
                if name not in f:
                    fail(f"{path}: no group /{name} "
                         "(make it with `tessera-data import fashion-mnist`)")
                g = f[name]
                x = g["x"][...]
                y = g["y"][...]
                if x.ndim != 4 or x.shape[1:] != (1, 28, 28) or y.shape != (x.shape[0],):
                    fail(f"{path}:/{name}: x has shape {x.shape} and y {y.shape}, "
                         "expected (N, 1, 28, 28) and (N,)")
                scale = float(g.attrs.get("scale", 1.0))
                mean = [float(v) for v in np.atleast_1d(g.attrs.get("mean", [0.0]))]
                std = [float(v) for v in np.atleast_1d(g.attrs.get("std", [1.0]))]
                splits[name] = Split(x, y, scale, mean, std)
    except OSError as e:
        fail(f"{path}: cannot read ({e})")
    except KeyError as e:
        fail(f"{path}: missing dataset {e}")
    return splits


def read_idx(path):
    try:
        with gzip.open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        fail(f"{path}: cannot read ({e}); install Debian's dataset-fashion-mnist")
    magic, = struct.unpack(">I", data[:4])
    dims = magic & 0xFF
    if magic >> 8 != 0x08 or dims not in (1, 3):
        fail(f"{path}: not an unsigned-byte IDX file (magic 0x{magic:08x})")
    shape = struct.unpack(">" + "I" * dims, data[4:4 + 4 * dims])
    array = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims)
    if array.size != math.prod(shape):
        fail(f"{path}: holds {array.size} bytes of data, header says {shape}")
    return array.reshape(shape).copy()  # writable, as torch.from_numpy wants


def read_idx_dir(folder):
    raw = {}
    for name, stem in (("train", "train"), ("test", "t10k")):
        x = read_idx(os.path.join(folder, f"{stem}-images-idx3-ubyte.gz"))
        y = read_idx(os.path.join(folder, f"{stem}-labels-idx1-ubyte.gz"))
        raw[name] = (x.reshape(-1, 1, 28, 28), y)
    # The constants `tessera-data import` stores: mean and std of the training images in [0, 1].
    scale = 1.0 / 255.0
    pixels = raw["train"][0].astype(np.float64) * scale
    mean, std = float(pixels.mean()), float(pixels.std())
    return {name: Split(x, y, scale, [mean], [std]) for name, (x, y) in raw.items()}


# --- models -------------------------------------------------------------------------------------

def make_model(kind):
    if kind == "mlp":  # inputs/fashion_mlp.toml
        return nn.Sequential(
            nn.Flatten(),
            nn.Linear(784, 256), nn.ReLU(),
            nn.Linear(256, 128), nn.ReLU(),
            nn.Linear(128, 10),
        )
    return nn.Sequential(  # inputs/fashion_cnn.toml
        nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64 * 7 * 7, 128), nn.ReLU(),
        nn.Linear(128, 10),
    )


def learning_rate(step, base, warmup, total, min_lr=0.0):
    """src/optim/schedule.cpp, cosine."""
    if step < warmup:
        return base * (step + 1) / warmup
    span = total - 1 - warmup  # min_lr at the run's last step
    progress = min(1.0, (step - warmup) / span) if span > 0 else 1.0
    return min_lr + 0.5 * (base - min_lr) * (1.0 + math.cos(math.pi * progress))


@torch.no_grad()
def evaluate(model, split, batch=256):
    model.eval()
    loss_sum, correct = 0.0, 0
    for first in range(0, len(split), batch):
        ids = torch.arange(first, min(first + batch, len(split)))
        x, y = split.batch(ids)
        out = model(x)
        loss_sum += F.cross_entropy(out, y, reduction="sum").item()
        correct += (out.argmax(1) == y).sum().item()
    model.train()
    return loss_sum / len(split), correct / len(split)


# --- data-parallel workers (--world N) ---------------------------------------------------------

WORKER_ENV = "FASHION_TORCH_PARENT"  # set in the workers' environment: the launcher's pid


class Stop(Exception):
    """SIGTERM or SIGHUP reached the launcher."""

    def __init__(self, signum):
        super().__init__(signum)
        self.signum = signum


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def describe_exit(code):
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


def stop_workers(procs, grace=5.0):
    """SIGTERM to the workers still running, SIGKILL to those left after `grace` seconds."""
    for p in procs:
        if p.poll() is None:
            p.terminate()
    deadline = time.monotonic() + grace
    for p in procs:
        try:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def launch(argv, world):
    """Runs this script as `world` worker processes and waits for them; returns the exit code."""
    port = free_port()
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
               WORLD_SIZE=str(world), **{WORKER_ENV: str(os.getpid())})
    env.setdefault("GLOO_SOCKET_IFNAME", "lo")  # the loopback device for 127.0.0.1

    def on_signal(signum, _frame):
        raise Stop(signum)

    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, on_signal)
    procs = []
    try:
        for rank in range(world):
            # Own session: a Ctrl-C at the terminal reaches the launcher only, which stops the
            # workers (no tracebacks from each); they die with it otherwise (PR_SET_PDEATHSIG).
            procs.append(subprocess.Popen(
                [sys.executable, os.path.abspath(__file__)] + list(argv),
                env=dict(env, RANK=str(rank), LOCAL_RANK=str(rank)), start_new_session=True))
        while True:
            codes = [p.poll() for p in procs]
            failed = [(rank, code) for rank, code in enumerate(codes) if code not in (None, 0)]
            if failed:
                # Every worker that has failed so far: a killed worker makes its peers fail too
                # (a broken gloo connection), and the message names them all.
                others = None in codes
                stop_workers(procs)
                print(f"{PROG}: error: " +
                      "; ".join(f"worker rank {rank} of {world} {describe_exit(code)}"
                                for rank, code in failed) +
                      ("; stopped the other workers" if others else ""),
                      file=sys.stderr, flush=True)
                return 2 if all(code == 2 for _, code in failed) else 1
            if None not in codes:
                return 0
            time.sleep(0.2)
    except KeyboardInterrupt:
        stop_workers(procs)
        print(f"{PROG}: interrupted; stopped the workers", file=sys.stderr, flush=True)
        return 128 + signal.SIGINT
    except Stop as e:
        stop_workers(procs)
        print(f"{PROG}: {signal.Signals(e.signum).name}; stopped the workers", file=sys.stderr,
              flush=True)
        return 128 + e.signum


def die_with_parent(parent):
    """A worker: ask for SIGTERM when the launcher dies; exit now if it already has."""
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:
        sys.exit(1)


def block(n, parts, part):
    """Tessera's block_range: (offset, count) of block `part` of `n` items in `parts` blocks."""
    base, extra = divmod(n, parts)
    return part * base + min(part, extra), base + (1 if part < extra else 0)


# --- main ---------------------------------------------------------------------------------------

def main(argv):
    ap = Parser(prog="fashion_torch.py",
                description="PyTorch (CPU) peer of Tessera's Fashion-MNIST decks: samples/s and "
                            "test accuracy.")
    ap.add_argument("--model", choices=("mlp", "cnn"), required=True)
    ap.add_argument("--steps", type=int, default=0,
                    help="optimizer steps (default: --epochs epochs)")
    ap.add_argument("--epochs", type=int, default=1, help="epochs when --steps is not given")
    ap.add_argument("--batch", type=int, default=128,
                    help="global batch, split over the --world workers (default 128)")
    ap.add_argument("--world", type=int, default=1,
                    help="data-parallel worker processes (DDP over gloo; default 1: none)")
    ap.add_argument("--lr", type=float, default=None, help="base learning rate (deck: 0.05)")
    ap.add_argument("--skip", type=int, default=20,
                    help="steps left out of the steady-state samples/s (default 20)")
    ap.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--data", default=None,
                    help=f"HDF5 file from tessera-data (default {DEFAULT_DATA}; when that is "
                         f"missing, or h5py is, Debian's IDX files in {IDX_DIR})")
    ap.add_argument("--idx", metavar="DIR", default=None,
                    help=f"read Debian's IDX files from DIR instead (e.g. {IDX_DIR})")
    ap.add_argument("--log-every", type=int, default=100)
    ap.add_argument("--no-eval", action="store_true", help="skip the test-set evaluation")
    ap.add_argument("--output", metavar="DIR", default=None,
                    help="write DIR/metrics.jsonl in Tessera's format")
    args = ap.parse_args(argv)
    for name in ("epochs", "batch", "threads", "log_every", "world"):
        if getattr(args, name) < 1:
            fail(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.steps < 0 or args.skip < 0:
        fail("--steps and --skip must be >= 0")
    if args.batch < args.world:
        fail(f"--batch {args.batch} is smaller than --world {args.world}: "
             "every worker needs a sample")

    global PROG
    rank, world = 0, args.world
    if world > 1:
        parent = os.environ.get(WORKER_ENV)
        if parent is None:
            return launch(argv, world)
        rank = int(os.environ["RANK"])
        if int(os.environ["WORLD_SIZE"]) != world:
            fail(f"WORLD_SIZE={os.environ['WORLD_SIZE']} but --world {world}")
        PROG = f"fashion_torch (rank {rank})"
        die_with_parent(int(parent))
    lead = rank == 0

    torch.set_num_threads(args.threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass
    torch.manual_seed(args.seed)  # the same initial parameters on every worker

    source = args.idx
    splits = None
    explicit = args.data is not None
    args.data = args.data or DEFAULT_DATA
    if source is None:
        if not os.path.exists(args.data):
            if not explicit and os.path.isdir(IDX_DIR):
                source = IDX_DIR
            else:
                fail(f"{args.data}: no such file "
                     "(run `build/bin/tessera-data import fashion-mnist`)")
        else:
            splits = read_h5(args.data)
            if splits is None:  # no h5py: fall back to the IDX files
                if not os.path.isdir(IDX_DIR):
                    fail("h5py is not installed (apt-get install python3-h5py) and "
                         f"{IDX_DIR} is missing (apt-get install dataset-fashion-mnist)")
                source = IDX_DIR
    if splits is None:
        splits = read_idx_dir(source)
        source = f"{source} (IDX)"
    else:
        source = f"{args.data} (HDF5)"
    train, test = splits["train"], splits["test"]

    deck = DECKS[args.model]
    base_lr = deck["lr"] if args.lr is None else args.lr
    per_epoch = (len(train) + args.batch - 1) // args.batch
    total = args.steps if args.steps > 0 else args.epochs * per_epoch
    if total <= deck["warmup"]:
        fail(f"{total} steps do not exceed the {deck['warmup']} warm-up steps "
             "of the cosine schedule")
    if args.skip >= total:
        fail(f"--skip {args.skip} leaves no steady-state steps of {total}")

    if world > 1:
        # After the data are read, so that a bad file fails fast on every worker.
        dist.init_process_group("gloo", init_method="env://", rank=rank, world_size=world)
    net = make_model(args.model)  # the module; `model` is what trains (DDP wrapping it)
    model = net if world == 1 else nn.parallel.DistributedDataParallel(net)
    decay = [p for p in model.parameters() if p.dim() > 1]  # weights; biases are not decayed
    no_decay = [p for p in model.parameters() if p.dim() <= 1]
    opt = torch.optim.SGD([{"params": decay, "weight_decay": deck["weight_decay"]},
                           {"params": no_decay, "weight_decay": 0.0}],
                          lr=base_lr, momentum=deck["momentum"])
    n_params = sum(p.numel() for p in model.parameters())
    onednn = torch.backends.mkldnn.is_available() and torch._C._get_mkldnn_enabled()
    parallel = (f", {world} workers (DDP, gloo), {torch.get_num_threads()} thread(s) each"
                if world > 1 else f", {torch.get_num_threads()} thread(s)")
    if lead:
        print(f"pytorch {torch.__version__}: {args.model}, {n_params} parameters, {total} steps "
              f"of {args.batch}{parallel}, oneDNN {'on' if onednn else 'off'}, data {source}",
              flush=True)

    metrics = None
    if args.output and lead:
        os.makedirs(args.output, exist_ok=True)
        metrics = open(os.path.join(args.output, "metrics.jsonl"), "w", encoding="utf-8")

    gen = torch.Generator().manual_seed(args.seed)
    perm = None
    window = [0.0, 0, 0, 0]  # loss sum, correct, samples, steps
    run_start = time.perf_counter()
    window_start = run_start
    steady_start = run_start if args.skip == 0 else None
    cpu_start = time.process_time() if args.skip == 0 else None
    steady_samples = 0
    for step in range(total):
        epoch, b = divmod(step, per_epoch)
        if b == 0:
            perm = torch.randperm(len(train), generator=gen)
        ids = perm[b * args.batch:(b + 1) * args.batch]
        n = ids.shape[0]  # the global batch (short at the end of an epoch)
        if world > 1:
            first, count = block(n, world, rank)
            ids = ids[first:first + count]
        x, y = train.batch(ids)
        lr = learning_rate(step, base_lr, deck["warmup"], total)
        for g in opt.param_groups:
            g["lr"] = lr
        opt.zero_grad(set_to_none=True)
        out = model(x)
        if world == 1:
            loss = F.cross_entropy(out, y)
        else:
            # Local sum / global batch x world: DDP's average over the workers then makes the
            # gradient of the global batch's mean loss, whatever the blocks' sizes.
            loss = F.cross_entropy(out, y, reduction="sum") * (world / n)
        loss.backward()
        opt.step()

        window[0] += loss.item() / world  # this worker's part of the step's mean loss
        window[1] += (out.argmax(1) == y).sum().item()
        window[2] += y.shape[0]
        window[3] += 1
        log_line = (step + 1) % args.log_every == 0 or step + 1 == total or step == 0
        if log_line and world > 1:
            sums = torch.tensor(window[:3], dtype=torch.float64)
            dist.all_reduce(sums)  # loss, correct and samples of the window over the workers
            window[:3] = sums.tolist()
        now = time.perf_counter()
        if steady_start is not None:
            steady_samples += n
        if step + 1 == args.skip:
            steady_start = now
            cpu_start = time.process_time()
        if log_line:
            rate = window[2] / max(now - window_start, 1e-12)
            loss_mean, acc = window[0] / window[3], window[1] / window[2]
            if lead:
                print(f"step {step + 1:6d}/{total}  epoch {epoch + 1}  loss {loss_mean:.4f}  "
                      f"acc {100 * acc:5.1f}%  {rate:.0f} samples/s  lr {lr:.3g}", flush=True)
            if metrics:
                metrics.write(json.dumps({
                    "kind": "train", "step": step + 1, "epoch": (step + 1) / per_epoch,
                    "loss": loss_mean, "accuracy": acc, "samples_per_s": round(rate, 1),
                    "lr": lr, "time": round(now - run_start, 3)}) + "\n")
            window = [0.0, 0, 0, 0]
            window_start = time.perf_counter()  # printing is not timed
            if steady_start is not None and step + 1 >= args.skip:
                steady_start += window_start - now
    train_seconds = time.perf_counter() - run_start
    steady_seconds = time.perf_counter() - steady_start
    samples_per_s = steady_samples / steady_seconds
    # CPU time of the process over the same steps (printing included): on a busy machine,
    # samples per CPU-second stay near the unloaded samples/s while wall-time rates drop. With
    # --world, the CPU time of all the workers.
    cpu_seconds = time.process_time() - cpu_start
    if world > 1:
        cpu = torch.tensor([cpu_seconds], dtype=torch.float64)
        dist.all_reduce(cpu)
        cpu_seconds = cpu.item()
        if not lead:
            dist.destroy_process_group()
            return 0
    cpu_samples_per_s = steady_samples / max(cpu_seconds, 1e-9)

    summary = {"kind": "summary", "peer": "pytorch", "torch": torch.__version__,
               "model": args.model, "steps": total, "batch": args.batch, "world": world,
               "threads": torch.get_num_threads(), "skip": args.skip,
               "samples_per_s": round(samples_per_s, 1),
               "cpu_samples_per_s": round(cpu_samples_per_s, 1), "train_s": round(train_seconds, 3)}
    print(f"steady state: {samples_per_s:.0f} samples/s over steps {args.skip + 1}-{total} "
          f"({steady_samples} samples in {steady_seconds:.2f} s; "
          f"{cpu_samples_per_s:.0f} per CPU-second)")
    if not args.no_eval:
        test_loss, test_acc = evaluate(net, test)  # rank 0 alone: the module, not DDP
        summary.update(test_loss=round(test_loss, 5), test_accuracy=round(test_acc, 5))
        print(f"final: {total} steps in {train_seconds:.1f} s; test loss {test_loss:.4f}, "
              f"test accuracy {100 * test_acc:.2f}%")
        if metrics:
            metrics.write(json.dumps({
                "kind": "eval", "step": total, "split": "test", "loss": test_loss,
                "accuracy": test_acc, "samples": len(test),
                "time": round(time.perf_counter() - run_start, 3)}) + "\n")
    if metrics:
        metrics.close()
    print(json.dumps(summary), flush=True)
    if world > 1:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
