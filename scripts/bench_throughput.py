"""Throughput of ganbench's real training step against a plain eager PyTorch reference loop, in one process.

    python scripts/bench_throughput.py loss=hinge constraint=sn model=sngan_cnn batch_size=64 n_dis=5 --iters 50

Both loops use the same G and D architectures, the same batch sizes and n_dis, and data already resident on the
device. The reference is the kind of loop published repos use: a DataLoader-free tensor dataset, eager modules,
`torch.nn.utils.parametrizations.spectral_norm`, `.item()` of the losses every step. ganbench's side calls
`ganbench.step.d_step` / `g_step` exactly as `ganbench train` does.

Prints G-steps/s, D images/s, peak GPU memory (CUDA only) and the ratio ganbench / reference. The reference loop
implements only the pairs a typical repo has (hinge+sn, wgan_gp, gn); for others it prints ganbench alone.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
import torch.nn.functional as F
from hydra.utils import instantiate

from ganbench import config
from ganbench.step import d_step, g_step
from ganbench.build import make, resolve_device


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def build(cfg, device, shape):
    G = make(cfg.model.generator, "generator", out_shape=shape).to(device)
    D = make(cfg.model.discriminator, "discriminator", in_shape=shape)
    return G, D


def ganbench_loop(cfg, device, data):
    shape = tuple(data.shape[1:])
    G, D = build(cfg, device, shape)
    constraint, loss = instantiate(cfg.constraint), instantiate(cfg.loss)
    D = constraint.prepare(D).to(device)
    opt_g, opt_d = instantiate(cfg.optim.g)(G.parameters()), instantiate(cfg.optim.d)(D.parameters())
    Dw, penalties = constraint.wrap(D), tuple(loss.penalties) + tuple(constraint.penalties)
    g_batch = cfg.g_batch_size or cfg.batch_size

    def sample(n):
        return data[torch.randint(len(data), (n,), device=device)].float() / 127.5 - 1

    def step():
        for _ in range(cfg.n_dis):
            d_step(G, D, Dw, loss, penalties, constraint, opt_d, sample(cfg.batch_size),
                   G.sample_z(cfg.batch_size, device=device))
        g_step(G, D, Dw, loss, opt_g, G.sample_z(g_batch, device=device),
               sample(g_batch) if loss.g_uses_real else None)

    return step


def reference_loop(cfg, device, data, kind):
    """A plain eager loop as in public repos; ``kind`` in hinge_sn | wgan_gp | gn."""
    shape = tuple(data.shape[1:])
    G, D = build(cfg, device, shape)
    if kind == "hinge_sn":
        for m in D.modules():
            if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
                torch.nn.utils.parametrizations.spectral_norm(m)
    D = D.to(device)
    lr, betas = cfg.optim.lr_d, tuple(cfg.optim.betas)
    opt_g = torch.optim.Adam(G.parameters(), lr=cfg.optim.lr_g, betas=betas)
    opt_d = torch.optim.Adam(D.parameters(), lr=lr, betas=betas)
    g_batch = cfg.g_batch_size or cfg.batch_size

    def critic(x):
        if kind != "gn":
            return D(x)
        x = x.requires_grad_(True) if not x.requires_grad else x
        f = D(x)
        grad = torch.autograd.grad(f.sum(), x, create_graph=True)[0].flatten(1).norm(dim=1)
        return f / (grad + f.abs())

    def step():
        for _ in range(cfg.n_dis):
            real = data[torch.randint(len(data), (cfg.batch_size,), device=device)].float() / 127.5 - 1
            with torch.no_grad():
                fake = G(torch.randn(cfg.batch_size, G.z_dim, device=device))
            d_real, d_fake = critic(real), critic(fake)
            if kind == "wgan_gp":
                loss_d = d_fake.mean() - d_real.mean()
                eps = torch.rand(len(real), 1, 1, 1, device=device)
                x = (eps * real + (1 - eps) * fake).requires_grad_(True)
                grad = torch.autograd.grad(D(x).sum(), x, create_graph=True)[0]
                loss_d = loss_d + 10 * ((grad.flatten(1).norm(dim=1) - 1) ** 2).mean()
            elif kind == "gn":
                loss_d = F.softplus(-d_real).mean() + F.softplus(d_fake).mean()
            else:
                loss_d = F.relu(1 - d_real).mean() + F.relu(1 + d_fake).mean()
            opt_d.zero_grad()
            loss_d.backward()
            opt_d.step()
            loss_d.item()  # what most repos do for their progress print: a sync per step
        fake = G(torch.randn(g_batch, G.z_dim, device=device))
        loss_g = F.softplus(-critic(fake)).mean() if kind == "gn" else -critic(fake).mean()
        opt_g.zero_grad()
        loss_g.backward()
        opt_g.step()
        loss_g.item()

    return step


def timed(step, iters, warmup, device):
    for _ in range(warmup):
        step()
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    for _ in range(iters):
        step()
    sync(device)
    elapsed = time.perf_counter() - t
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else float("nan")
    return iters / elapsed, peak


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("overrides", nargs="*", help="ganbench train overrides")
    args = parser.parse_args(argv)
    cfg = config.compose(args.overrides)
    config.validate(cfg)
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    dataset = make(cfg.dataset, "dataset").to(device)
    if not getattr(dataset, "is_image", False):
        sys.exit("bench_throughput: use an image dataset (the reference loop is for images)")
    data = dataset.images
    loss_name = cfg.loss._target_.rsplit(".", 1)[-1]
    cons_name = cfg.constraint._target_.rsplit(".", 1)[-1]
    kind = {("Hinge", "SpectralNorm"): "hinge_sn", ("WGANGP", "NoConstraint"): "wgan_gp",
            ("SGAN", "GradNorm"): "gn"}.get((loss_name, cons_name))
    imgs = cfg.n_dis * cfg.batch_size * 2
    print(f"device {device}  model {cfg.model.generator._target_.rsplit('.', 1)[-1]}  loss {loss_name}  "
          f"constraint {cons_name}  batch {cfg.batch_size}  n_dis {cfg.n_dis}  iters {args.iters}")
    rate, peak = timed(ganbench_loop(cfg, device, data), args.iters, args.warmup, device)
    print(f"ganbench   {rate:8.2f} G-steps/s  {rate * imgs:10.0f} D images/s  peak {peak:8.1f} MiB")
    if kind is None:
        print("reference  (none for this pair: the reference loop covers hinge+sn, wgan_gp and sgan+gn)")
        return
    ref_rate, ref_peak = timed(reference_loop(cfg, device, data, kind), args.iters, args.warmup, device)
    print(f"reference  {ref_rate:8.2f} G-steps/s  {ref_rate * imgs:10.0f} D images/s  peak {ref_peak:8.1f} MiB")
    print(f"ratio ganbench/reference: {rate / ref_rate:.2f}x speed, {peak / ref_peak:.2f}x peak memory")


if __name__ == "__main__":
    main()
