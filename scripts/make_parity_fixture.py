#!/usr/bin/env python3
"""Writes tests/data/parity.safetensors: a small randomly initialised PyTorch
VAE (the architecture of scripts/train_torch.py), an input batch and the
PyTorch outputs, so `cargo test` checks that candle computes the same forward
pass from the same tensor names without needing PyTorch installed."""
import os, sys
import torch
from safetensors.torch import save_file
sys.path.insert(0, os.path.dirname(__file__))
from train_torch import Vae

torch.manual_seed(0)
m = Vae(c1=8, c2=8, c3=16, z=4).eval()
with torch.no_grad():
    for n, p in m.named_parameters():  # make GDN non-trivial
        if n.endswith("gamma"):
            p.uniform_(0.0, 0.3)
        if n.endswith("beta"):
            p.uniform_(0.5, 1.5)
    x = torch.rand(2, 3, 48, 32)
    mu, logvar = m.encode(x)
    y = m.decode(mu)
t = {k: v.contiguous() for k, v in m.state_dict().items()}
t.update({"test.x": x, "test.mu": mu.contiguous(), "test.logvar": logvar.contiguous(), "test.y": y.contiguous()})
save_file(t, "tests/data/parity.safetensors", metadata={"vaeproxy.config": "c1=8,c2=8,c3=16,z=4"})
print("wrote tests/data/parity.safetensors")
