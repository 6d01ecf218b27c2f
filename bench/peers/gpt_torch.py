#!/usr/bin/env python3
"""bench/peers/gpt_torch.py — the PyTorch peer of inputs/kjv_gpt.toml: the same byte-level GPT,
data, optimizer and schedule, for the comparisons in bench/RESULTS.md (validation loss after the
same steps; tokens per second on one thread).

    /usr/bin/python3 bench/peers/gpt_torch.py --steps 3000 --threads 1
    /usr/bin/python3 bench/peers/gpt_torch.py --init runs/kjv-gpt/ckpt/ckpt-00000000.h5 ...

The model is Tessera's, written with torch.nn: token + position embedding; `--layers` pre-LayerNorm
blocks of causal multi-head self-attention (a fused qkv Linear(C, 3C) and a projection Linear(C,
C)) and an MLP (Linear(C, 4C), exact-erf GELU, Linear(4C, C)), each inside a residual; a final
LayerNorm; a head Linear(C, vocab) without bias; per-token cross entropy (nats per byte). AdamW
with Tessera's groups (weight decay on the weights of the linear layers only), betas, eps, clipping
at a global norm, and Tessera's schedule (linear warm-up, then cosine to min_lr at the last step).

--init loads Tessera's initial weights from a checkpoint written with checkpoint.at_start = true
(h5py), so both start from the same point; without it PyTorch's own init (normal 0.02) is used.
Training windows are drawn uniformly from the training stream with torch's generator (not
Tessera's Philox stream: the same distribution, not the same windows); evaluation uses Tessera's
windows exactly: the validation stream tiled in order, (tokens - 1) // context windows of
context + 1 tokens.

Prints one JSON line per --log-every steps ({"step", "loss", "tokens_per_s"}), one per evaluation
({"eval": true, "step", "loss"}), and a summary last line ({"summary": true, "tokens_per_s",
"val_loss", ...}); --output DIR also writes DIR/metrics.jsonl in Tessera's metrics format.
"""
import argparse
import json
import math
import os
import sys
import time

import h5py
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


class Block(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.ln2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, 4 * dim)
        self.fc2 = nn.Linear(4 * dim, dim)
        self.heads = heads

    def attention(self, x):
        n, t, c = x.shape
        h = self.heads
        q, k, v = self.qkv(x).split(c, dim=2)
        q = q.view(n, t, h, c // h).transpose(1, 2)
        k = k.view(n, t, h, c // h).transpose(1, 2)
        v = v.view(n, t, h, c // h).transpose(1, 2)
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(c // h))
        mask = torch.ones(t, t, dtype=torch.bool).tril()
        att = att.masked_fill(~mask, float("-inf")).softmax(dim=-1)
        y = (att @ v).transpose(1, 2).contiguous().view(n, t, c)
        return self.proj(y)

    def forward(self, x):
        x = x + self.attention(self.ln1(x))
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))


class GPT(nn.Module):
    def __init__(self, vocab, dim, heads, layers, context):
        super().__init__()
        self.wte = nn.Embedding(vocab, dim)
        self.wpe = nn.Embedding(context, dim)
        self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(layers))
        self.ln = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab, bias=False)
        for name, p in self.named_parameters():
            if name.endswith("bias"):
                nn.init.zeros_(p)
            elif p.dim() >= 2:
                nn.init.normal_(p, 0.0, 0.02)

    def forward(self, idx):
        t = idx.shape[1]
        x = self.wte(idx) + self.wpe(torch.arange(t))
        for b in self.blocks:
            x = b(x)
        return self.head(self.ln(x))


def tessera_names(layers):
    """Tessera's parameter names for inputs/kjv_gpt.toml's layer list, in this module's terms:
    layers = [embedding, repeat(residual[layernorm, attention], residual[layernorm, linear, gelu,
    linear]), layernorm, linear]."""
    names = {"wte.weight": "embedding0.wte", "wpe.weight": "embedding0.wpe",
             "ln.weight": "layernorm2.weight", "ln.bias": "layernorm2.bias",
             "head.weight": "linear3.weight"}
    for i in range(layers):
        a = f"repeat1.{i}.residual0"
        m = f"repeat1.{i}.residual1"
        for ours, theirs in [("ln1", f"{a}.layernorm0"), ("ln2", f"{m}.layernorm0"),
                             ("qkv", f"{a}.attention1.qkv"), ("proj", f"{a}.attention1.proj"),
                             ("fc1", f"{m}.linear1"), ("fc2", f"{m}.linear3")]:
            for what in ("weight", "bias"):
                names[f"blocks.{i}.{ours}.{what}"] = f"{theirs}.{what}"
    return names


def load_tessera(model, path, layers):
    with h5py.File(path, "r") as f:
        for ours, theirs in tessera_names(layers).items():
            data = f["model/" + theirs.replace(".", "/")][...]
            p = dict(model.named_parameters())[ours]
            if tuple(data.shape) != tuple(p.shape):
                sys.exit(f"{path}: {theirs} has shape {data.shape}, the model's {ours} {tuple(p.shape)}")
            with torch.no_grad():
                p.copy_(torch.from_numpy(np.ascontiguousarray(data)))


def learning_rate(step, base, warmup, total, min_lr):
    """src/optim/schedule.cpp, cosine: min_lr at the run's last step."""
    if step < warmup:
        return base * (step + 1) / warmup
    span = total - 1 - warmup
    progress = min(1.0, (step - warmup) / span) if span > 0 else 1.0
    return min_lr + 0.5 * (base - min_lr) * (1.0 + math.cos(math.pi * progress))


@torch.no_grad()
def evaluate(model, stream, context, batch):
    windows = (len(stream) - 1) // context
    total = 0.0
    for first in range(0, windows, batch):
        starts = np.arange(first, min(windows, first + batch)) * context
        x = torch.from_numpy(np.stack([stream[s:s + context] for s in starts]).astype(np.int64))
        y = torch.from_numpy(np.stack([stream[s + 1:s + context + 1] for s in starts]).astype(np.int64))
        logits = model(x)
        total += F.cross_entropy(logits.view(-1, logits.shape[-1]), y.view(-1), reduction="sum").item()
    return total / (windows * context)


def main():
    a = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    a.add_argument("--data", default="data/kjv.h5")
    a.add_argument("--layers", type=int, default=4)
    a.add_argument("--dim", type=int, default=256)
    a.add_argument("--heads", type=int, default=4)
    a.add_argument("--context", type=int, default=128)
    a.add_argument("--batch", type=int, default=32)
    a.add_argument("--steps", type=int, default=3000)
    a.add_argument("--lr", type=float, default=1e-3)
    a.add_argument("--min-lr", type=float, default=1e-4)
    a.add_argument("--warmup", type=int, default=100)
    a.add_argument("--weight-decay", type=float, default=0.1)
    a.add_argument("--beta1", type=float, default=0.9)
    a.add_argument("--beta2", type=float, default=0.99)
    a.add_argument("--eps", type=float, default=1e-8)
    a.add_argument("--clip", type=float, default=1.0)
    a.add_argument("--seed", type=int, default=1337)
    a.add_argument("--threads", type=int, default=1)
    a.add_argument("--log-every", type=int, default=50)
    a.add_argument("--eval-every", type=int, default=0, help="0: only at the end")
    a.add_argument("--skip", type=int, default=20, help="steps excluded from tokens/s")
    a.add_argument("--init", default="", help="Tessera's step-0 checkpoint (checkpoint.at_start)")
    a.add_argument("--no-eval", action="store_true")
    a.add_argument("--bf16", action="store_true",
                   help="the forward (and so its backward) under torch.autocast('cpu', bfloat16)")
    a.add_argument("--output", default="", help="also write DIR/metrics.jsonl")
    o = a.parse_args()
    torch.set_num_threads(o.threads)
    torch.manual_seed(o.seed)
    with h5py.File(o.data, "r") as f:
        train = f["train/tokens"][...]
        valid = f["validation/tokens"][...]
        vocab = int(f["train"].attrs["vocab"])
    model = GPT(vocab, o.dim, o.heads, o.layers, o.context)
    if o.init:
        load_tessera(model, o.init, o.layers)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and not n.startswith(("wte", "wpe"))]
    rest = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and not n.startswith(("wte", "wpe")))]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": o.weight_decay},
                             {"params": rest, "weight_decay": 0.0}],
                            lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps)
    gen = torch.Generator().manual_seed(o.seed)
    if o.output:
        os.makedirs(o.output, exist_ok=True)
    metrics = open(os.path.join(o.output, "metrics.jsonl"), "w") if o.output else None

    def record(line):
        print(json.dumps(line), flush=True)
        if metrics:
            metrics.write(json.dumps(line) + "\n")

    tokens = 0
    timed = 0.0
    window_loss = 0.0
    window_steps = 0
    clock = time.perf_counter()
    for step in range(o.steps):
        starts = torch.randint(0, len(train) - o.context - 1 + 1, (o.batch,), generator=gen).numpy()
        x = torch.from_numpy(np.stack([train[s:s + o.context] for s in starts]).astype(np.int64))
        y = torch.from_numpy(np.stack([train[s + 1:s + o.context + 1] for s in starts]).astype(np.int64))
        for g in opt.param_groups:
            g["lr"] = learning_rate(step, o.lr, o.warmup, o.steps, o.min_lr)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=o.bf16):
            logits = model(x)
            loss = F.cross_entropy(logits.view(-1, vocab), y.view(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if o.clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), o.clip)
        opt.step()
        window_loss += loss.item()
        window_steps += 1
        now = time.perf_counter()
        if step >= o.skip:
            tokens += o.batch * o.context
            timed += now - clock
        clock = now
        if (step + 1) % o.log_every == 0 or step + 1 == o.steps:
            record({"kind": "train", "step": step + 1, "loss": window_loss / window_steps,
                    "tokens_per_s": tokens / timed if timed > 0 else 0.0})
            window_loss, window_steps = 0.0, 0
        if o.eval_every and (step + 1) % o.eval_every == 0 and step + 1 < o.steps and not o.no_eval:
            record({"kind": "eval", "step": step + 1, "loss": evaluate(model, valid, o.context, 64)})
            clock = time.perf_counter()
    val = None if o.no_eval else evaluate(model, valid, o.context, 64)
    if val is not None:
        record({"kind": "eval", "step": o.steps, "loss": val})
    print(json.dumps({"summary": True, "torch": torch.__version__, "threads": o.threads,
                      "precision": "bf16" if o.bf16 else "fp32",
                      "steps": o.steps, "tokens_per_s": tokens / timed if timed > 0 else 0.0,
                      "val_loss": val}), flush=True)


if __name__ == "__main__":
    main()
