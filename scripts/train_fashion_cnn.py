#!/usr/bin/python3
"""Trains the small ResNet-style CNN compress's tests quantize and prune, on
Debian's dataset-fashion-mnist, and exports it to ONNX (opset 13).

    /usr/bin/python3 scripts/train_fashion_cnn.py [OUT.onnx]

Needs python3-torch (1.13) and dataset-fashion-mnist from apt. Seeded and
single-threaded-ish (2 threads), so a rerun on the same torch build gives the
same weights. Two epochs take about 15 minutes of CPU (2 threads); the
committed model printed "epoch 2: ... test accuracy 0.9159".

Training adds a small L1 penalty on the BatchNorm scales (network slimming,
Liu et al. 2017), meant to leave unneeded channels with small filters once
BatchNorm is folded into the convolutions at export. At this weight and in two
epochs it leaves no channel idle: the smallest filter still has a third of its
layer's mean L1 norm, which is why pruning this model without retraining costs
so much accuracy (compress's TestFashionMNISTAccuracyAfterCompression logs it).

Input "image" float32 [batch, 1, 28, 28], pixels / 255; output "logits"
float32 [batch, 10].
"""
import gzip
import sys

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

SEED = 20261204
# SLIMMING is the weight of the L1 penalty on BatchNorm scales.
SLIMMING = 3e-4
DATA = "/usr/share/datasets/fashion-mnist"


def idx(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


class Block(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.a = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn_a = nn.BatchNorm2d(cout)
        self.b = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn_b = nn.BatchNorm2d(cout)
        self.proj = None
        if stride != 1 or cin != cout:
            self.proj = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        h = F.relu(self.bn_a(self.a(x)))
        h = self.bn_b(self.b(h))
        skip = x if self.proj is None else self.proj(x)
        return F.relu(h + skip)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 32, 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(32)
        self.blocks = nn.Sequential(Block(32, 32, 1), Block(32, 64, 2), Block(64, 128, 2))
        self.fc = nn.Linear(128, 10)

    def forward(self, x):
        x = F.relu(self.bn(self.stem(x)))
        x = self.blocks(x)
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.fc(x)


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "compress/testdata/fashion_cnn.onnx"
    torch.manual_seed(SEED)
    np.random.seed(SEED)
    torch.set_num_threads(2)
    x = torch.from_numpy(idx(DATA + "/train-images-idx3-ubyte.gz").astype(np.float32) / 255).unsqueeze(1)
    y = torch.from_numpy(idx(DATA + "/train-labels-idx1-ubyte.gz").astype(np.int64))
    tx = torch.from_numpy(idx(DATA + "/t10k-images-idx3-ubyte.gz").astype(np.float32) / 255).unsqueeze(1)
    ty = torch.from_numpy(idx(DATA + "/t10k-labels-idx1-ubyte.gz").astype(np.int64))
    net = Net()
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    epochs, batch = 2, 128
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=4e-3, total_steps=epochs * (len(x) // batch))
    for epoch in range(epochs):
        net.train()
        perm = torch.randperm(len(x))
        for i in range(len(x) // batch):
            idxs = perm[i * batch:(i + 1) * batch]
            loss = F.cross_entropy(net(x[idxs]), y[idxs])
            gammas = [m.weight for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
            loss = loss + SLIMMING * sum(g.abs().sum() for g in gammas)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        net.eval()
        with torch.no_grad():
            pred = torch.cat([net(tx[i:i + 500]).argmax(1) for i in range(0, len(tx), 500)])
        print(f"epoch {epoch + 1}: loss {loss.item():.4f} test accuracy {(pred == ty).float().mean().item():.4f}", flush=True)
    torch.onnx.export(net, tx[:1], out, opset_version=13, input_names=["image"], output_names=["logits"],
                      dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}}, do_constant_folding=True)
    print("wrote", out)


if __name__ == "__main__":
    main()
