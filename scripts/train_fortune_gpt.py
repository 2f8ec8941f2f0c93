#!/usr/bin/python3
"""Trains the small GPT that `make demo` generates text with, on the fortune
cookies of Debian's fortunes package, and writes its weights as safetensors.

    go run ./scripts/corpusids -merges 8000 -tokenizer-out tok/ -out ids.bin
    /usr/bin/python3 scripts/train_fortune_gpt.py ids.bin OUT.safetensors [--steps N]

Needs python3-torch (1.13) and an optimized BLAS (libopenblas0-pthread: with
Debian's reference BLAS a step takes 30 times as long) from apt. The model is
the one `meshctl gen-model gpt --with-past --layers 4 --dim 128 --heads 4
--context 256 --vocab 8257` builds (partition/modelgen's GPT-2 layout: pre-LayerNorm blocks, erf GELU,
LayerNorm epsilon 1e-5, the LM head tied to the token table), so that
`meshctl gen-model gpt --with-past --weights OUT.safetensors` puts these weights
into the same graph. Tensor names are modelgen's initializer names
(block0/attn/qkv/weight, ...); every matrix is stored [in, out], as the graph's
MatMul reads it. The file's metadata records the shape and the training run.

Training: ids.bin is the little-endian int32 token ids corpusids writes (every
fortune followed by a "%" line; the tokenizer of GPT-2's first 8,000 merges,
8,257 tokens); the last 5% are held out. AdamW (weight decay 0.01 on the
matrices), 1,200 steps, the first 60 warming up to a peak of 3e-3, then cosine
decay to 3e-4; batch 8 x 256 tokens drawn at random offsets; seeded (20261205)
and run on 2 threads. Two runs on the same machine agree step for step at first
and drift apart by a few thousandths of a nat by step 500 (the threads' floating
point sums are not always added in one order), so a rerun gives a model of the
same quality, not the same bytes; the file records the held-out loss of its own
weights. It prints the training and held-out loss as it goes; the held-out loss
is the mean cross-entropy over the first 16 windows of 256 tokens at a stride of
1,024 in the held-out part, recorded in the file's metadata with the corpus's
token count.

The committed models/fortune-gpt.safetensors came from this script as it is
(849,523 tokens of fortunes 1:1.99.1-7.3): held-out loss 4.734 nats a token
(chance is ln 8257 = 9.02), 564 s on the 2 cores of the build machine.
"""
import argparse
import json
import math
import os
import struct
import time

# torch runs its own 2 threads; OpenBLAS's threads beside them double a step's time.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

LAYERS, DIM, HEADS, CONTEXT, VOCAB = 4, 128, 4, 256, 8257
SEED = 20261205
EPS = 1e-5


class Block(torch.nn.Module):
    def __init__(self):
        super().__init__()
        d = DIM
        self.ln1 = torch.nn.LayerNorm(d, eps=EPS)
        self.qkv_w = torch.nn.Parameter(torch.randn(d, 3 * d) * 0.02)
        self.qkv_b = torch.nn.Parameter(torch.zeros(3 * d))
        self.proj_w = torch.nn.Parameter(torch.randn(d, d) * 0.02 / math.sqrt(2 * LAYERS))
        self.proj_b = torch.nn.Parameter(torch.zeros(d))
        self.ln2 = torch.nn.LayerNorm(d, eps=EPS)
        self.fc_w = torch.nn.Parameter(torch.randn(d, 4 * d) * 0.02)
        self.fc_b = torch.nn.Parameter(torch.zeros(4 * d))
        self.fc2_w = torch.nn.Parameter(torch.randn(4 * d, d) * 0.02 / math.sqrt(2 * LAYERS))
        self.fc2_b = torch.nn.Parameter(torch.zeros(d))

    def forward(self, x, mask):
        b, s, d = x.shape
        hd = d // HEADS
        qkv = self.ln1(x) @ self.qkv_w + self.qkv_b
        q, k, v = qkv.split(d, dim=2)
        q = q.view(b, s, HEADS, hd).transpose(1, 2)
        k = k.view(b, s, HEADS, hd).transpose(1, 2)
        v = v.view(b, s, HEADS, hd).transpose(1, 2)
        scores = (q @ k.transpose(2, 3)) * (1.0 / math.sqrt(hd)) + mask[:s, :s]
        ctx = torch.softmax(scores, dim=-1) @ v
        x = x + ctx.transpose(1, 2).reshape(b, s, d) @ self.proj_w + self.proj_b
        h = self.ln2(x) @ self.fc_w + self.fc_b
        h = 0.5 * h * (1.0 + torch.erf(h / math.sqrt(2.0)))
        return x + h @ self.fc2_w + self.fc2_b


class GPT(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.wte = torch.nn.Parameter(torch.randn(VOCAB, DIM) * 0.02)
        self.wpe = torch.nn.Parameter(torch.randn(CONTEXT, DIM) * 0.01)
        self.blocks = torch.nn.ModuleList(Block() for _ in range(LAYERS))
        self.ln_f = torch.nn.LayerNorm(DIM, eps=EPS)
        self.register_buffer("mask", torch.triu(torch.full((CONTEXT, CONTEXT), float("-inf")), diagonal=1))

    def forward(self, ids):
        x = self.wte[ids] + self.wpe[: ids.shape[1]]
        for blk in self.blocks:
            x = blk(x, self.mask)
        return self.ln_f(x) @ self.wte.t()


def named_weights(m):
    """The model's tensors under modelgen's initializer names."""
    out = {"wte": m.wte, "wpe": m.wpe, "ln_f/scale": m.ln_f.weight, "ln_f/bias": m.ln_f.bias}
    for i, blk in enumerate(m.blocks):
        p = "block%d/" % i
        out.update({
            p + "ln1/scale": blk.ln1.weight, p + "ln1/bias": blk.ln1.bias,
            p + "attn/qkv/weight": blk.qkv_w, p + "attn/qkv/bias": blk.qkv_b,
            p + "attn/proj/weight": blk.proj_w, p + "attn/proj/bias": blk.proj_b,
            p + "ln2/scale": blk.ln2.weight, p + "ln2/bias": blk.ln2.bias,
            p + "mlp/fc/weight": blk.fc_w, p + "mlp/fc/bias": blk.fc_b,
            p + "mlp/proj/weight": blk.fc2_w, p + "mlp/proj/bias": blk.fc2_b,
        })
    return out


def write_safetensors(path, tensors, meta):
    """safetensors: an 8-byte little-endian header length, a JSON header (padded
    with spaces to 8 bytes), then each tensor's little-endian float16 bytes (half
    the size of float32; the held-out loss is measured with the rounded weights)."""
    header, blobs, off = {"__metadata__": meta}, [], 0
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().half()
        data = t.numpy().astype("<f2").tobytes()
        header[name] = {"dtype": "F16", "shape": list(t.shape), "data_offsets": [off, off + len(data)]}
        blobs.append(data)
        off += len(data)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("ids")
    ap.add_argument("out")
    ap.add_argument("--steps", type=int, default=1200)
    ap.add_argument("--batch", type=int, default=8)
    args = ap.parse_args()

    torch.manual_seed(SEED)
    torch.set_num_threads(2)
    raw = open(args.ids, "rb").read()
    ids = torch.tensor(struct.unpack("<%di" % (len(raw) // 4), raw), dtype=torch.long)
    split = int(len(ids) * 0.95)
    train, held = ids[:split], ids[split:]
    model = GPT()
    decay = [p for n, p in model.named_parameters() if p.dim() == 2]
    rest = [p for n, p in model.named_parameters() if p.dim() != 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": rest, "weight_decay": 0.0}],
                            lr=3e-3, betas=(0.9, 0.95))
    gen = torch.Generator().manual_seed(SEED)

    def batch(data, n):
        starts = torch.randint(0, len(data) - CONTEXT - 1, (n,), generator=gen)
        x = torch.stack([data[s:s + CONTEXT] for s in starts.tolist()])
        y = torch.stack([data[s + 1:s + CONTEXT + 1] for s in starts.tolist()])
        return x, y

    def held_loss():
        model.eval()
        with torch.no_grad():
            losses = []
            for s in range(0, len(held) - CONTEXT - 1, CONTEXT * 4)[:16]:
                x, y = held[s:s + CONTEXT][None], held[s + 1:s + CONTEXT + 1][None]
                losses.append(F.cross_entropy(model(x).view(-1, VOCAB), y.view(-1)).item())
        model.train()
        return sum(losses) / len(losses)

    t0 = time.time()
    for step in range(args.steps):
        warm = 60
        if step < warm:
            lr = 3e-3 * (step + 1) / warm
        else:
            lr = 3e-4 + 0.5 * (3e-3 - 3e-4) * (1 + math.cos(math.pi * (step - warm) / (args.steps - warm)))
        for g in opt.param_groups:
            g["lr"] = lr
        x, y = batch(train, args.batch)
        loss = F.cross_entropy(model(x).view(-1, VOCAB), y.view(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 100 == 0 or step == args.steps - 1:
            print("step %d loss %.3f held-out %.3f lr %.2e %.0f s" % (step, loss.item(), held_loss(), lr, time.time() - t0),
                  flush=True)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.half().float())
    final = held_loss()
    meta = {"format": "layermesh-gpt", "layers": str(LAYERS), "dim": str(DIM), "heads": str(HEADS),
            "context": str(CONTEXT), "vocab": str(VOCAB), "corpus": "Debian fortunes", "tokenizer": "GPT-2's first 8000 merges",
            "steps": str(args.steps), "seed": str(SEED), "corpus_tokens": str(len(ids)),
            "held_out_loss": "%.6f" % final}
    write_safetensors(args.out, named_weights(model), meta)
    print("wrote %s: held-out loss %.3f after %d steps, %.0f s" % (args.out, final, args.steps, time.time() - t0))


if __name__ == "__main__":
    main()
