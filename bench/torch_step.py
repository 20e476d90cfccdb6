#!/usr/bin/env python3
"""The OAT / OATS training step of oats-train, written in PyTorch eager, for the side-by-side
speed benchmark (bench/train-step.sh). Same architecture (post-activation ResNet: the small
preset or CIFAR ResNet-34), FiLM + dual BN (+ switchable BN per width for OATS), same step:
clean forward (train), PGD in eval mode with input-only gradients, adversarial forward,
loss averaged over the batch, one SGD step. Prints one line: `torch <mode> <arch> <img/s>`.
Usage: torch_step.py MODE ARCH BATCH PGD_STEPS ITERS THREADS"""
import math
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

D = 128


def ch(c, w):
    return max(1, int(c * w))


class Site(nn.Module):
    def __init__(self, c, widths, film=True):
        super().__init__()
        self.bns = nn.ModuleList([nn.ModuleList([nn.BatchNorm2d(ch(c, w)) for _ in range(2)]) for w in widths])
        self.film = nn.Sequential(nn.Linear(D, 2 * c), nn.LeakyReLU(0.01), nn.Linear(2 * c, 2 * c)) if film else None

    def forward(self, x, enc, n0, wi):
        b = x.shape[0]
        parts = []
        if n0 > 0:
            parts.append(self.bns[wi][0](x[:n0]))
        if n0 < b:
            parts.append(self.bns[wi][1](x[n0:]))
        y = torch.cat(parts) if len(parts) > 1 else parts[0]
        if self.film is None:
            return y
        cw = x.shape[1]
        l1, l2 = self.film[0], self.film[2]
        h = F.leaky_relu(F.linear(enc, l1.weight[:2 * cw], l1.bias[:2 * cw]), 0.01)
        o = F.linear(h, l2.weight[:2 * cw, :2 * cw], l2.bias[:2 * cw])
        g, be = F.leaky_relu(o[:, :cw]), F.leaky_relu(o[:, cw:2 * cw])
        return y * g.view(-1, cw, 1, 1) + be.view(-1, cw, 1, 1)


class SlimConv(nn.Conv2d):
    def __init__(self, cin, cout, k, s, p, fixed_in=False):
        super().__init__(cin, cout, k, s, p, bias=False)
        self.fixed_in = fixed_in

    def forward(self, x, w):
        o = ch(self.out_channels, w)
        i = self.in_channels if self.fixed_in else ch(self.in_channels, w)
        return F.conv2d(x, self.weight[:o, :i], None, self.stride, self.padding)


class Net(nn.Module):
    def __init__(self, arch, widths, cin, classes=10):
        super().__init__()
        self.widths = widths
        c0, stages = (16, [(16, 1, 2), (32, 1, 2), (64, 1, 2)]) if arch == "small" else (64, [(64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)])
        self.stem = SlimConv(cin, c0, 3, 1, 1, True)
        self.stem_norm = Site(c0, widths)
        self.blocks = nn.ModuleList()
        c_in = c0
        for c, n, s in stages:
            for i in range(n):
                st = s if i == 0 else 1
                blk = nn.Module()
                blk.conv1, blk.norm1 = SlimConv(c_in, c, 3, st, 1), Site(c, widths)
                blk.conv2, blk.norm2 = SlimConv(c, c, 3, 1, 1), Site(c, widths)
                blk.sc = (SlimConv(c_in, c, 1, st, 0), Site(c, widths, film=False)) if (st != 1 or c_in != c) else None
                if blk.sc:
                    blk.sc_conv, blk.sc_norm = blk.sc
                self.blocks.append(blk)
                c_in = c
        self.fc = nn.Linear(c_in, classes)

    def forward(self, x, enc, n0, wi):
        w = self.widths[wi]
        h = F.relu(self.stem_norm(self.stem(x, w), enc, n0, wi))
        for b in self.blocks:
            o = F.relu(b.norm1(b.conv1(h, w), enc, n0, wi))
            o = b.norm2(b.conv2(o, w), enc, n0, wi)
            sc = b.sc_norm(b.sc_conv(h, w), enc, n0, wi) if b.sc else h
            h = F.relu(o + sc)
        h = F.adaptive_avg_pool2d(h, 1).flatten(1)
        fw = ch(self.fc.in_features, w)
        return F.linear(h, self.fc.weight[:, :fw], self.fc.bias)


def pgd(net, x, y, enc, wi, eps, step, steps):
    net.eval()
    xa = (x + torch.empty_like(x).uniform_(-eps, eps)).clamp(0, 1)
    for _ in range(steps):
        xa.requires_grad_(True)
        loss = F.cross_entropy(net(xa, enc, 0, wi), y, reduction="sum")
        (g,) = torch.autograd.grad(loss, [xa])
        xa = torch.min(torch.max(xa.detach() + step * g.sign(), x - eps), x + eps).clamp(0, 1)
    net.train()
    return xa.detach()


def main():
    mode, arch, batch, steps, iters, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    widths = [0.5, 0.75, 1.0] if mode == "oats" else [1.0]
    cin, hw = (1, 28) if arch == "small" else (3, 32)
    net = Net(arch, widths, cin)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    lambdas = [0.0, 0.1, 0.2, 0.3, 0.4, 1.0]
    q = torch.linalg.qr(torch.randn(D, D, dtype=torch.float64))[0][: len(lambdas)].float()
    x = torch.rand(batch, cin, hw, hw)
    y = torch.randint(0, 10, (batch,))
    eps = 0.1 if arch == "small" else 8 / 255
    step = eps / 4

    def one_step():
        n0 = math.ceil(batch / len(lambdas))
        idx = torch.cat([torch.zeros(n0, dtype=torch.long), torch.randint(1, len(lambdas), (batch - n0,))])
        lam = torch.tensor(lambdas)[idx]
        enc = q[idx]
        opt.zero_grad()
        for wi in reversed(range(len(widths))):
            logits = net(x, enc, n0, wi)
            loss = ((1 - lam) * F.cross_entropy(logits, y, reduction="none")).sum()
            xa = pgd(net, x[n0:], y[n0:], enc[n0:], wi, eps, step, steps)
            la = net(xa, enc[n0:], 0, wi)
            loss = loss + (lam[n0:] * F.cross_entropy(la, y[n0:], reduction="none")).sum()
            (loss / (batch * len(widths))).backward()
        opt.step()

    net.train()
    one_step()  # warm-up
    t = time.perf_counter()
    for _ in range(iters):
        one_step()
    dt = time.perf_counter() - t
    print(f"torch {mode} {arch} {batch * iters / dt:.2f}")


if __name__ == "__main__":
    main()
