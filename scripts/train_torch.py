#!/usr/bin/env python3
"""Trains the vaeproxy VAE with PyTorch (CPU or GPU) and exports candle weights.

The same architecture as src/model/ (names equal the candle VarBuilder paths),
the same loss as `vaeproxy train`: distortion (MSE in 8-bit units) + beta * KL
to N(0, I) in bits per pixel, reparameterised z = mu + sigma * eps, with the
KL weight and the noise ramped in over the first steps (KL annealing; the full
objective from step 0 stalls at worse than mean-colour reconstruction).

PyTorch is an optional, faster path (oneDNN's CPU convolutions are ~10x faster
than candle's for backward). `vaeproxy train` is the reference trainer and
needs nothing but the binary. The exported file still needs
`vaeproxy calibrate` to add the entropy model.

Checkpoints (model, optimiser, RNG, step) every --ckpt-secs to OUT.pt; --resume
continues exactly where the checkpoint left off.
"""
import argparse, csv, glob, math, os, random, sys, time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file


class Gdn(nn.Module):
    def __init__(self, c, inverse):
        super().__init__()
        self.beta = nn.Parameter(torch.ones(c))
        self.gamma = nn.Parameter(torch.rand(c, c, 1, 1) * 0.02)
        self.inverse = inverse

    def forward(self, x):
        norm = F.conv2d(x.abs(), self.gamma.abs()) + (self.beta.abs() + 1e-6).view(1, -1, 1, 1)
        return x * norm if self.inverse else x / norm


def conv(cin, cout, k):
    return nn.Conv2d(cin, cout, k, padding=k // 2)


class ResBlock(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv1 = conv(c, c, 3)
        self.conv2 = conv(c, c, 3)

    def forward(self, x):
        return x + self.conv2(F.relu(self.conv1(x)))


class Down(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.proj = conv(cin * 4, cout, 1)
        self.gdn = Gdn(cout, False)

    def forward(self, x):
        return self.gdn(self.proj(F.pixel_unshuffle(x, 2)))


class Up(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.proj = conv(cin, cout * 4, 1)
        self.igdn = Gdn(cout, True)

    def forward(self, x):
        return self.igdn(F.pixel_shuffle(self.proj(x), 2))


class Encoder(nn.Module):
    def __init__(self, c1, c2, c3, z):
        super().__init__()
        self.stem = conv(48, c1, 3)
        self.gdn0 = Gdn(c1, False)
        self.down1 = Down(c1, c2)
        self.res1 = ResBlock(c2)
        self.down2 = Down(c2, c3)
        self.res2 = ResBlock(c3)
        self.head = conv(c3, 2 * z, 3)
        self.z = z

    def forward(self, x):
        x = self.gdn0(self.stem(F.pixel_unshuffle(x, 4)))
        x = self.res1(self.down1(x))
        x = self.res2(self.down2(x))
        h = self.head(x)
        return h[:, : self.z], h[:, self.z :]


class Decoder(nn.Module):
    def __init__(self, c1, c2, c3, z):
        super().__init__()
        self.head = conv(z, c3, 3)
        self.res2 = ResBlock(c3)
        self.up2 = Up(c3, c2)
        self.res1 = ResBlock(c2)
        self.up1 = Up(c2, c1)
        self.out = conv(c1, 48, 3)

    def forward(self, z):
        x = self.res2(self.head(z))
        x = self.res1(self.up2(x))
        return F.pixel_shuffle(self.out(self.up1(x)), 4)


class Vae(nn.Module):
    def __init__(self, c1=32, c2=64, c3=128, z=32):
        super().__init__()
        self.cfg = dict(c1=c1, c2=c2, c3=c3, z=z)
        self.enc = Encoder(c1, c2, c3, z)
        self.dec = Decoder(c1, c2, c3, z)

    def encode(self, x):
        return self.enc(x - 0.5)

    def decode(self, z):
        return self.dec(z) + 0.5


def load_images(d):
    files = sorted(glob.glob(os.path.join(d, "*.png")) + glob.glob(os.path.join(d, "*.jpg")))
    if not files:
        sys.exit(f"no images in {d}")
    return [torch.from_numpy(np.asarray(Image.open(f).convert("RGB"))).permute(2, 0, 1).contiguous() for f in files]


def batch(images, n, size, rng):
    out = torch.empty(n, 3, size, size, dtype=torch.uint8)
    for i in range(n):
        im = images[rng.randrange(len(images))]
        _, h, w = im.shape
        # random downscale 1x..2x before cropping: more scales of texture from few photos
        s = rng.uniform(1.0, min(2.0, h / size, w / size))
        ch, cw = int(size * s), int(size * s)
        y, x = rng.randrange(h - ch + 1), rng.randrange(w - cw + 1)
        crop = im[:, y : y + ch, x : x + cw]
        if ch != size:
            crop = F.interpolate(crop[None].float(), size=(size, size), mode="area", antialias=False)[0].round().clamp(0, 255).byte()
        if rng.random() < 0.5:
            crop = crop.flip(2)
        if rng.random() < 0.5:
            crop = crop.flip(1)
        out[i] = crop
    return out.float() / 255.0


def losses(model, x, beta, noise):
    mu, logvar = model.encode(x)
    logvar = logvar.clamp(-12, 6)
    z = mu + noise * torch.exp(0.5 * logvar) * torch.randn_like(mu)
    y = model.decode(z)
    mse255 = F.mse_loss(y, x) * 255.0 ** 2
    kl = 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar)
    kl_bpp = kl.sum() / math.log(2) / (x.shape[0] * x.shape[2] * x.shape[3])
    return mse255 + beta * kl_bpp, mse255, kl_bpp


def grow(model, old):
    """Loads a checkpoint into a model with as many or more latent channels.

    The old channels keep their weights; a new channel starts nearly switched
    off (mean weights scaled down, log-variance 0 so sigma = 1 and KL ~ 0) and
    the decoder starts nearly blind to it, so the grown model begins at the
    old model's quality and training turns new channels on only where their
    bits buy distortion. With as many channels it is a plain warm start.
    """
    new = model.state_dict()
    z_old, z = old["dec.head.weight"].shape[1], model.cfg["z"]
    for k, v in old.items():
        if k.startswith("enc.head."):
            t = new[k]
            t[:z_old] = v[:z_old]
            t[z_old:z] *= 0.1
            t[z : z + z_old] = v[z_old:]
            t[z + z_old :] = 0
        elif k == "dec.head.weight":
            new[k][:, :z_old] = v
            new[k][:, z_old:] *= 0.1
        else:
            new[k] = v
    model.load_state_dict(new)


def export(model, path):
    sd = {k: v.detach().float().cpu().contiguous() for k, v in model.state_dict().items()}
    meta = {"vaeproxy.config": ",".join(f"{k}={v}" for k, v in model.cfg.items())}
    tmp = path + ".tmp"
    save_file(sd, tmp, metadata=meta)
    os.replace(tmp, path)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="data/train")
    ap.add_argument("--val", default="data/val")
    ap.add_argument("--out", default="checkpoints/torch")
    ap.add_argument("--steps", type=int, default=20000)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--crop", type=int, default=128)
    ap.add_argument("--beta", type=float, default=150.0)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--warmup", type=int, default=2000, help="steps over which KL weight and noise ramp in")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ckpt-secs", type=float, default=120)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--z", type=int, default=32, help="latent channels")
    ap.add_argument("--init", help="start a new run from this checkpoint's weights (may have fewer latent channels)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    os.makedirs(os.path.dirname(a.out) or ".", exist_ok=True)
    images, val = load_images(a.data), load_images(a.val)
    model = Vae(z=a.z).to(dev)
    if a.init and not (a.resume and os.path.exists(a.out + ".pt")):
        grow(model, torch.load(a.init, weights_only=False)["model"])
        print(f"initialised from {a.init}")
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, weight_decay=0.0)
    rng = random.Random(a.seed)
    torch.manual_seed(a.seed)
    step = 0
    ckpt = a.out + ".pt"
    if a.resume and os.path.exists(ckpt):
        st = torch.load(ckpt, weights_only=False)
        model.load_state_dict(st["model"]); opt.load_state_dict(st["opt"])
        step = st["step"]; rng.setstate(st["py_rng"]); torch.set_rng_state(st["torch_rng"])
        print(f"resumed at step {step}")
    log = open(a.out + ".csv", "a", newline="")
    w = csv.writer(log)
    if step == 0:
        w.writerow(["step", "loss", "mse255", "psnr", "kl_bpp", "beta", "noise", "lr", "val_psnr", "val_meancolour_psnr", "img_per_s"])
    vb = batch(val, 32, a.crop, random.Random(12345)).to(dev)
    mean_col = vb.mean(dim=(2, 3), keepdim=True).expand_as(vb)
    base_psnr = 10 * math.log10(1 / F.mse_loss(mean_col, vb).item())
    last_ckpt, t0, seen = time.time(), time.time(), 0
    while step < a.steps:
        ramp = min(1.0, step / max(1, a.warmup))
        beta, noise = a.beta * ramp, ramp
        lr = a.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / a.steps))) if step > a.warmup else a.lr
        for g in opt.param_groups:
            g["lr"] = lr
        x = batch(images, a.batch, a.crop, rng).to(dev)
        loss, mse, kl = losses(model, x, beta, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        step += 1
        seen += a.batch
        if step % 100 == 0 or step == a.steps:
            with torch.no_grad():
                mu, _ = model.encode(vb)
                vpsnr = 10 * math.log10(1 / F.mse_loss(model.decode(mu).clamp(0, 1), vb).item())
            ips = seen / (time.time() - t0)
            psnr = 10 * math.log10(255 ** 2 / max(mse.item(), 1e-9))
            w.writerow([step, f"{loss.item():.4f}", f"{mse.item():.3f}", f"{psnr:.2f}", f"{kl.item():.4f}", f"{beta:.2f}", f"{noise:.3f}", f"{lr:.2e}", f"{vpsnr:.2f}", f"{base_psnr:.2f}", f"{ips:.1f}"])
            log.flush()
            print(f"step {step} loss {loss.item():.3f} psnr {psnr:.2f} kl_bpp {kl.item():.4f} val_psnr(mu) {vpsnr:.2f} (mean-colour {base_psnr:.2f}) {ips:.1f} img/s", flush=True)
        if time.time() - last_ckpt > a.ckpt_secs or step == a.steps:
            tmp = ckpt + ".tmp"
            torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step, "py_rng": rng.getstate(), "torch_rng": torch.get_rng_state()}, tmp)
            os.replace(tmp, ckpt)
            export(model, a.out + ".safetensors")
            last_ckpt = time.time()


if __name__ == "__main__":
    main()
