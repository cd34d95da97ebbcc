#!/usr/bin/env python3
"""Writes tests/data/hyperprior-parity.safetensors: a small randomly
initialised codec v2 network (scripts/train_codec.py's architecture, narrow
widths), an input and PyTorch's outputs of every transform, so `cargo test`
checks that candle computes the same forward passes from the same tensor
names without PyTorch installed; with the entropy tables `--export` writes,
so the v2 coder round-trips on it too."""
import os, sys
import torch
from safetensors.torch import save_file
sys.path.insert(0, os.path.dirname(__file__))
from train_codec import Codec, entropy_tensors

torch.manual_seed(0)
m = Codec(c=8, n=8, zc=4, levels=3, c1=8, c2=8, c3=16).eval()
with torch.no_grad():
    for n, p in m.named_parameters():
        if n.endswith("gamma"):  # make GDN non-trivial
            p.uniform_(0.0, 0.3)
        if n.endswith("beta"):
            p.uniform_(0.5, 1.5)
        if n.startswith("dec.refine.conv2"):  # zero-initialised in training
            p.normal_(0.0, 0.1)
        if n.startswith("gain_"):
            p.uniform_(-1.0, 1.0)
    x = torch.rand(1, 3, 128, 64)
    y = m.enc(x)
    z = m.hyper_enc(y)
    mean, log_scale = m.hyper_dec(torch.round(z))
    x_hat = m.dec(y)
t = {k: v.contiguous() for k, v in m.state_dict().items() if not k.startswith("z_prior.")}
t.update(entropy_tensors(m))  # the coder's integer tables, as --export writes them
t.update({"test.x": x, "test.y": y.contiguous(), "test.z": z.contiguous(), "test.mean": mean.contiguous(),
          "test.log_scale": log_scale.contiguous(), "test.x_hat": x_hat.contiguous()})
meta = {"vaeproxy.config": ",".join(f"{k}={v}" for k, v in m.cfg.items())}
save_file(t, "tests/data/hyperprior-parity.safetensors", metadata=meta)
print("wrote tests/data/hyperprior-parity.safetensors", {k: tuple(v.shape) for k, v in t.items() if k.startswith("test.")})
