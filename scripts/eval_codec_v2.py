#!/usr/bin/env python3
"""Where codec v2's training checkpoint stands on Kodak, per level: the rate
estimated from the entropy model's probabilities of the rounded latents
(y and z; what an ideal coder with these models would spend; the real
coded sizes of `vaeproxy eval-v2` came within 2 % of it), and PSNR of the 8-bit output. Next to it, WebP at
the same bpp from the Kodak folder's reference-curves.csv (linear
interpolation).

For reporting only: Kodak must never decide anything about training.

    python3 scripts/eval_codec_v2.py --images KODAK_DIR [--ckpt weights/train/codec-v2.pt]

KODAK_DIR holds the 24 PNGs and reference-curves.csv (the shared folder's
kodak/).
"""
import argparse, csv, glob, math, os, sys

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, os.path.dirname(__file__))
from train_codec import Codec


def reference(path, codec):
    pts = []
    for r in csv.DictReader(open(path)):
        if r["codec"] == codec:
            pts.append((float(r["bpp"]), float(r["psnr_rgb"])))
    return sorted(pts)


def interp(pts, bpp):
    for (b0, p0), (b1, p1) in zip(pts, pts[1:]):
        if b0 <= bpp <= b1:
            return p0 + (p1 - p0) * (bpp - b0) / (b1 - b0)
    return float("nan")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ckpt", default="weights/train/codec-v2.pt")
    ap.add_argument("--images", required=True, help="the Kodak folder (with reference-curves.csv)")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    st = torch.load(a.ckpt, map_location="cpu", weights_only=False)
    m = Codec(**{"levels": 8, **st.get("cfg", {})})
    m.load_state_dict(st["model"])
    m.eval()
    files = sorted(glob.glob(os.path.join(a.images, "*.png")))
    levels = m.cfg["levels"]
    ceiling = []  # PSNR of the top level's transform pair without rounding
    bpp = np.zeros((levels, len(files)))
    psnr = np.zeros((levels, len(files)))
    with torch.no_grad():
        for i, f in enumerate(files):
            x = torch.from_numpy(np.array(Image.open(f).convert("RGB"))).permute(2, 0, 1)[None].float() / 255
            _, _, h, w = x.shape
            ph, pw = (-h) % 64, (-w) % 64
            xp = torch.nn.functional.pad(x, (0, pw, 0, ph), mode="replicate")
            g = torch.exp(m.gain_enc[levels - 1] + m.gain_dec[levels - 1])[None, :, None, None]
            xu = m.dec(m.enc(xp) * g)[..., :h, :w].clamp(0, 1)
            ceiling.append(10 * math.log10(1 / ((xu - x) ** 2).mean().item()))
            for l in range(levels):
                x_hat, yb, zb = m(xp, torch.tensor([l]), noisy=False)
                out = (x_hat[..., :h, :w].clamp(0, 1) * 255).round() / 255
                mse = ((out - x) ** 2).mean().item()
                bpp[l, i] = (yb + zb).item() / (h * w)
                psnr[l, i] = 10 * math.log10(1 / mse)
    webp = reference(os.path.join(a.images, "reference-curves.csv"), "webp")
    avif = reference(os.path.join(a.images, "reference-curves.csv"), "avif-s6-444")
    print(f"checkpoint step {st['step']}, {len(files)} images")
    print("| level | bpp (estimated) | PSNR | WebP at that bpp | AVIF s6 4:4:4 at that bpp |")
    print("|---|---|---|---|---|")
    for l in range(levels):
        b, p = bpp[l].mean(), psnr[l].mean()
        print(f"| {l + 1} | {b:.3f} | {p:.2f} | {interp(webp, b):.2f} | {interp(avif, b):.2f} |")
    print(f"transform ceiling (top level's gains, no rounding): {np.mean(ceiling):.2f} dB")


if __name__ == "__main__":
    main()
