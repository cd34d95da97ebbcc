#!/usr/bin/env python3
"""Trains codec v2: a rate-distortion VAE with a mean-scale hyperprior and
per-level gain vectors (one model, eight rates), in resumable chunks.

Why this objective (Balle et al. 2017/2018, Minnen et al. 2018): the codec
quantizes the latent with a step of one, so training treats the posterior as
a uniform box of width one around the encoder's output. The rate is -log2 of
the entropy model's probability of the noisy latent (the same Gaussian
conditional, mean and scale from the hyper-decoder, that the coder uses), and
the decoder sees the rounded latent through a straight-through gradient
(Minnen & Singh 2020), so what it learns to reconstruct is what it will get.
Loss per image = bpp + lambda_l * MSE (8-bit units), for a level l drawn per
image; the level's gain vector scales the latent before rounding and its
inverse gain scales it back before the decoder (Cui et al. 2021), so one
network serves every level.

Resumable on any machine: one checkpoint file (network, optimiser, RNG, step,
the arguments) is replaced atomically every --ckpt-secs and at exit, and the
log CSV is appended to; `--resume` (the default) continues exactly where it
stopped. Commit both (weights/train/) before a session ends.

    python3 scripts/train_codec.py --steps 200000            # runs until killed or done
    python3 scripts/train_codec.py --export weights/train/codec-v2.safetensors

The network names equal the candle VarBuilder paths the Rust side will use.
Never train or select on Kodak or on images kept for evaluation.
"""
import argparse, csv, glob, math, os, random, signal, sys, time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

# Rate-distortion trade-off of each level (bpp + lambda * MSE in 8-bit units),
# about 0.1 to 1 bpp; a model uses the first `levels` of them (8 until step
# 29,949, 10 since, for the issue's >= 0.8 bpp top).
LAMBDAS = [0.0008 * 1.875**k for k in range(10)]
SCALE_MIN = 0.11  # lower bound of the Gaussian scale (as in CompressAI)
LIKELIHOOD_MIN = 1e-9


# The blocks (simplified GDN, "same" convs, residual blocks, space-to-depth
# down and depth-to-space up) are v1's, with the same parameter names.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_torch import Down, Gdn, ResBlock, Up, conv  # noqa: E402


class Encoder(nn.Module):
    """Analysis transform: image in [0,1] -> y (C channels at 1/16)."""

    def __init__(self, c, c1=32, c2=64, c3=128):
        super().__init__()
        self.stem = conv(48, c1, 3)
        self.gdn0 = Gdn(c1, False)
        self.res0 = ResBlock(c1)
        self.down1 = Down(c1, c2)
        self.res1 = ResBlock(c2)
        self.down2 = Down(c2, c3)
        self.res2 = ResBlock(c3)
        self.head = conv(c3, c, 3)

    def forward(self, x):
        x = self.res0(self.gdn0(self.stem(F.pixel_unshuffle(x - 0.5, 4))))
        x = self.res1(self.down1(x))
        x = self.res2(self.down2(x))
        return self.head(x)


class Refine(nn.Module):
    """Full-resolution smoothing: a residual 3x3 conv pair on the RGB output,
    which sees across the 2/4/8/16-px pattern the depth-to-space steps leave."""

    def __init__(self):
        super().__init__()
        self.conv1 = conv(3, 8, 3)
        self.conv2 = conv(8, 3, 3)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x):
        return x + self.conv2(F.relu(self.conv1(x)))


class Decoder(nn.Module):
    """Synthesis transform: y (C at 1/16) -> image; ends at full resolution."""

    def __init__(self, c, c1=32, c2=64, c3=128):
        super().__init__()
        self.head = conv(c, c3, 3)
        self.res2 = ResBlock(c3)
        self.up2 = Up(c3, c2)
        self.res1 = ResBlock(c2)
        self.up1 = Up(c2, c1)
        self.res0 = ResBlock(c1)
        self.up0 = Up(c1, c1 // 2)
        self.out = conv(c1 // 2, 12, 3)
        self.refine = Refine()

    def forward(self, y):
        x = self.res2(self.head(y))
        x = self.res1(self.up2(x))
        x = self.res0(self.up1(x))
        x = self.out(self.up0(x))
        return self.refine(F.pixel_shuffle(x, 2)) + 0.5


class HyperEncoder(nn.Module):
    """y (1/16) -> z (1/64)."""

    def __init__(self, c, n, zc):
        super().__init__()
        self.conv0 = conv(c, n, 3)
        self.conv1 = conv(4 * n, n, 3)
        self.conv2 = conv(4 * n, zc, 1)

    def forward(self, y):
        h = F.relu(self.conv0(y))
        h = F.relu(self.conv1(F.pixel_unshuffle(h, 2)))
        return self.conv2(F.pixel_unshuffle(h, 2))


class HyperDecoder(nn.Module):
    """z (1/64) -> (mean, log-scale) of y at 1/16, in the unscaled latent space.

    The scale is exp(log-scale), so the coder's table index is an affine
    function of this output plus the level's log-gain: cheap to make exact.
    """

    def __init__(self, c, n, zc):
        super().__init__()
        self.conv0 = conv(zc, n, 3)
        self.up1 = conv(n, 4 * n, 1)
        self.conv1 = conv(n, n, 3)
        self.up2 = conv(n, 4 * n, 1)
        self.conv2 = conv(n, 2 * c, 3)
        self.c = c

    def forward(self, z):
        h = F.relu(self.conv0(z))
        h = F.relu(F.pixel_shuffle(self.up1(h), 2))
        h = F.relu(self.conv1(h))
        h = F.relu(F.pixel_shuffle(self.up2(h), 2))
        p = self.conv2(h)
        return p[:, : self.c], p[:, self.c :]


class FactorizedPrior(nn.Module):
    """Balle et al. 2018's non-parametric density per channel (filters 3,3,3):
    a monotone cumulative built from softplus-positive matrices. Tabulated to
    integer pmfs for the coder at export."""

    def __init__(self, channels, filters=(3, 3, 3), init_scale=10.0):
        super().__init__()
        f = (1,) + tuple(filters) + (1,)
        scale = init_scale ** (1 / (len(filters) + 1))
        self.n = len(filters) + 1
        for i in range(self.n):
            init = math.log(math.expm1(1 / scale / f[i + 1]))
            self.register_parameter(f"matrix{i}", nn.Parameter(torch.full((channels, f[i + 1], f[i]), init)))
            self.register_parameter(f"bias{i}", nn.Parameter(torch.rand(channels, f[i + 1], 1) - 0.5))
            if i < self.n - 1:
                self.register_parameter(f"factor{i}", nn.Parameter(torch.zeros(channels, f[i + 1], 1)))

    def logits_cdf(self, x):
        # x: (C, 1, N)
        for i in range(self.n):
            x = torch.matmul(F.softplus(getattr(self, f"matrix{i}")), x) + getattr(self, f"bias{i}")
            if i < self.n - 1:
                x = x + torch.tanh(getattr(self, f"factor{i}")) * torch.tanh(x)
        return x

    def likelihood(self, z):
        b, c, h, w = z.shape
        v = z.permute(1, 0, 2, 3).reshape(c, 1, -1)
        lo, hi = self.logits_cdf(v - 0.5), self.logits_cdf(v + 0.5)
        sign = -torch.sign(lo + hi).detach()
        lik = (torch.sigmoid(sign * hi) - torch.sigmoid(sign * lo)).abs()
        return lik.reshape(c, b, h, w).permute(1, 0, 2, 3).clamp_min(LIKELIHOOD_MIN)


def gaussian_likelihood(r, scale):
    """P(|symbol - r| <= 1/2) under N(0, scale): r is y - mean (noisy or rounded)."""
    scale = scale.clamp_min(SCALE_MIN)
    r = r.abs()
    upper = 0.5 * torch.erfc((r - 0.5) / (scale * math.sqrt(2)))
    lower = 0.5 * torch.erfc((r + 0.5) / (scale * math.sqrt(2)))
    return (upper - lower).clamp_min(LIKELIHOOD_MIN)


def round_ste(x):
    return x + (torch.round(x) - x).detach()


class Codec(nn.Module):
    def __init__(self, c=128, n=96, zc=64, levels=len(LAMBDAS), c1=32, c2=64, c3=128):
        super().__init__()
        self.cfg = dict(c1=c1, c2=c2, c3=c3, c=c, n=n, zc=zc, levels=levels)
        self.enc = Encoder(c, c1, c2, c3)
        self.dec = Decoder(c, c1, c2, c3)
        self.hyper_enc = HyperEncoder(c, n, zc)
        self.hyper_dec = HyperDecoder(c, n, zc)
        self.z_prior = FactorizedPrior(zc)
        # Log-gains per level and channel: latent * exp(enc) before rounding,
        # rounded latent * exp(dec) into the decoder. Initialised so the step
        # grows as 1/sqrt(lambda), the MSE-optimal rule for a fixed transform.
        lg = torch.tensor([0.5 * math.log(l / LAMBDAS[levels - 1]) for l in LAMBDAS[:levels]])
        self.gain_enc = nn.Parameter(lg[:, None].repeat(1, c))
        self.gain_dec = nn.Parameter(-lg[:, None].repeat(1, c))

    def forward(self, x, level, noisy=True):
        """x: (B,3,H,W) in [0,1], H and W multiples of 64; level: (B,) long.
        Returns reconstruction, y bits, z bits (per image)."""
        y = self.enc(x)
        z = self.hyper_enc(y)
        if noisy:
            z_hat = z + torch.empty_like(z).uniform_(-0.5, 0.5)
        else:
            z_hat = torch.round(z)
        z_bits = -torch.log2(self.z_prior.likelihood(z_hat)).sum(dim=(1, 2, 3))
        mean, log_scale = self.hyper_dec(z_hat)
        ge = self.gain_enc[level][:, :, None, None]
        gd = self.gain_dec[level][:, :, None, None]
        g = torch.exp(ge)
        yl, ml = y * g, mean * g
        scale = torch.exp(log_scale + ge)
        r = yl - ml
        r_rate = r + torch.empty_like(r).uniform_(-0.5, 0.5) if noisy else torch.round(r)
        y_bits = -torch.log2(gaussian_likelihood(r_rate, scale)).sum(dim=(1, 2, 3))
        y_hat = round_ste(r) + ml
        x_hat = self.dec(y_hat * torch.exp(gd))
        return x_hat, y_bits, z_bits


def load_images(d):
    files = sorted(glob.glob(os.path.join(d, "*.png")) + glob.glob(os.path.join(d, "*.jpg")))
    if not files:
        sys.exit(f"no images in {d}: run scripts/fetch-training-data.sh")
    return [torch.from_numpy(np.array(Image.open(f).convert("RGB"))).permute(2, 0, 1).contiguous() for f in files]


def batch(images, n, size, rng):
    out = torch.empty(n, 3, size, size, dtype=torch.uint8)
    for i in range(n):
        im = images[rng.randrange(len(images))]
        _, h, w = im.shape
        if h < size or w < size:
            im = F.interpolate(im[None].float(), scale_factor=size / min(h, w) + 1e-3, mode="bilinear")[0].round().clamp(0, 255).byte()
            _, h, w = im.shape
        # a random downscale of up to 1.5x: more scales of texture, fewer JPEG traces
        s = rng.uniform(1.0, min(1.5, h / size, w / size))
        ch = cw = int(size * s)
        y, x = rng.randrange(h - ch + 1), rng.randrange(w - cw + 1)
        crop = im[:, y : y + ch, x : x + cw]
        if ch != size:
            crop = F.interpolate(crop[None].float(), size=(size, size), mode="area")[0].round().clamp(0, 255).byte()
        if rng.random() < 0.5:
            crop = crop.flip(2)
        out[i] = crop
    return out.float() / 255.0


def val_crops(images, size):
    """Centre crops of the held-out photos (fixed, so the curve is comparable)."""
    out = []
    for im in images:
        _, h, w = im.shape
        if h >= size and w >= size:
            y, x = (h - size) // 2, (w - size) // 2
            out.append(im[:, y : y + size, x : x + size])
    return torch.stack(out).float() / 255.0


@torch.no_grad()
def validate(model, vb):
    """Per level: real-rounding rate estimate (bpp) and PSNR of the clamped output."""
    rows = []
    px = vb.shape[2] * vb.shape[3]
    for l in range(model.cfg["levels"]):
        lv = torch.full((vb.shape[0],), l, dtype=torch.long)
        x_hat, yb, zb = model(vb, lv, noisy=False)
        mse = F.mse_loss(x_hat.clamp(0, 1), vb, reduction="none").mean(dim=(1, 2, 3))
        psnr = (10 * torch.log10(1 / mse)).mean().item()
        rows.append(((yb + zb).mean().item() / px, psnr))
    return rows


def init_from_v1(model, path):
    """Warm start from the v1 weights (weights/vae.safetensors): every tensor
    whose name and shape match is copied, the v1 mean channels go into the
    first latent channels, and the rest keep their fresh initialisation."""
    from safetensors.torch import load_file

    old = load_file(path)
    new = model.state_dict()
    copied = 0
    for k, v in old.items():
        if k not in new:
            continue
        t = new[k]
        if t.shape == v.shape:
            t.copy_(v)
            copied += 1
        elif k == "enc.head.weight" or k == "enc.head.bias":
            zo = v.shape[0] // 2  # v1's head is (mu, logvar)
            t[:zo] = v[:zo]
            copied += 1
        elif k == "dec.head.weight":
            zo = v.shape[1]
            t[:, :zo] = v
            t[:, zo:] *= 0.1
            copied += 1
    model.load_state_dict(new)
    print(f"initialised {copied} tensors from {path}")


def grow(model, old_sd, old_cfg):
    """Widens a trained network function-preservingly (Net2Net-style): every
    old tensor lands in the first channels of its wider copy, every weight
    from a new channel into an old one starts at zero (so the old outputs are
    exactly what they were), and new channels start from a fresh init, the new
    latent channels small and cheap (mean 0, scale 0.25) so the rate barely
    moves. Space-to-depth keeps a channel's four sub-pixels together
    (index 4c + k), so old channels stay a prefix there too; the one tensor
    that is not a prefix is the hyper decoder's (mean | log-scale) output."""
    new = model.state_dict()
    c_old, c_new = old_cfg["c"], model.cfg["c"]
    for k, t in new.items():
        v = old_sd[k]
        if t.shape == v.shape:
            t.copy_(v)
            continue
        if k.startswith("gain_"):
            # new levels continue the old ones' log-gain steps (lambda grows
            # by the same factor per level), new channels take the mean
            lv, cv = v.shape
            rows = torch.cat([v, v[-1:] + (v[-1:] - v[-2:-1]) * torch.arange(1, t.shape[0] - lv + 1)[:, None]]) if t.shape[0] > lv else v
            t[:, :cv] = rows
            t[:, cv:] = rows.mean(dim=1, keepdim=True)
            continue
        if k.startswith("hyper_dec.conv2."):
            t.zero_()
            if k.endswith("bias"):
                t[c_new:] = math.log(0.25)
            t[:c_old] = v[:c_old]
            t[c_new : c_new + c_old] = v[c_old:]
            continue
        if k == "enc.head.weight" or k == "enc.head.bias":
            t[c_old:] *= 0.1
        if t.dim() >= 2 and v.dim() >= 2:
            t[: v.shape[0], v.shape[1] :] = 0  # new inputs into old outputs
        t[tuple(slice(0, n) for n in v.shape)] = v
    model.load_state_dict(new)


def grow_adam(model, opt, old_opt_sd, old_names):
    """Carries the old Adam moments into the widened network the way `grow`
    carries the weights (old entries a prefix, new ones zero), so the old
    channels keep their step sizes instead of paying a fresh optimiser's
    warm-up (which cost ~0.2 dB for ~3,000 steps at the last growth). Tensors
    whose layout is not a prefix (hyper decoder output, gains of new levels)
    start with zero moments."""
    names = [n for n, _ in model.named_parameters()]
    old_state = {old_names[i]: s for i, s in old_opt_sd["state"].items()}
    sd = opt.state_dict()
    for i, (n, p) in enumerate(model.named_parameters()):
        o = old_state.get(n)
        if o is None:
            continue
        st = {"step": o["step"].clone()}
        for k in ("exp_avg", "exp_avg_sq"):
            v, t = o[k], torch.zeros_like(p)
            if v.shape == p.shape:
                t.copy_(v)
            elif v.dim() == p.dim() and not n.startswith(("hyper_dec.conv2.", "gain_")):
                t[tuple(slice(0, k) for k in v.shape)] = v
            st[k] = t
        sd["state"][i] = st
    assert len(names) == len(sd["param_groups"][0]["params"])
    opt.load_state_dict(sd)


# The coder's view of the entropy model: integer tables, so encoder and
# decoder agree bit for bit on every platform. The decoder never evaluates a
# CDF; it only computes which table to use (`scale_index`).
PRECISION = 24  # constriction's default: probabilities sum to 2^24
SCALES = 64
SCALE_MAX = 256.0
TAIL = 1e-9  # probability mass left to the escape symbol, per table


def fixed_point(p):
    """Float probabilities (summing to 1) -> positive integers summing to 2^PRECISION."""
    total = 1 << PRECISION
    q = np.maximum(np.floor(p * (total - len(p))).astype(np.int64), 0) + 1
    q[np.argmax(q)] += total - q.sum()
    assert q.min() >= 1 and q.sum() == total
    return q


def tables_gaussian():
    log_s = np.linspace(math.log(SCALE_MIN), math.log(SCALE_MAX), SCALES)
    pmfs, radius = [], []
    for ls in log_s:
        s = math.exp(ls)
        r = max(1, math.ceil(s * 6.2))
        k = torch.arange(-r, r + 1, dtype=torch.float64)
        cdf = lambda v: 0.5 * torch.erfc(-v / (s * math.sqrt(2)))
        p = (cdf(k + 0.5) - cdf(k - 0.5)).numpy()
        p = np.append(p, max(0.0, 1.0 - p.sum()))
        pmfs.append(fixed_point(p / p.sum()))
        radius.append(r)
    return log_s, pmfs, radius


def tables_z(model):
    """Per channel of z, the learned factorized density on -R..R, then an escape."""
    prior = model.z_prior
    c = prior.bias0.shape[0]
    pmfs, radius = [], []
    with torch.no_grad():
        for ch in range(c):
            # widen until the tails hold less than TAIL
            r = 8
            while True:
                k = torch.arange(-r, r + 1, dtype=torch.float32)
                v = k.view(1, 1, -1).repeat(c, 1, 1)
                lo = torch.sigmoid(prior.logits_cdf(v - 0.5))[ch, 0].double()
                hi = torch.sigmoid(prior.logits_cdf(v + 0.5))[ch, 0].double()
                tail = lo[0].item() + 1 - hi[-1].item()
                if tail < TAIL or r >= 512:
                    break
                r *= 2
            p = (hi - lo).clamp_min(0).numpy()
            p = np.append(p, max(0.0, 1.0 - p.sum()))
            pmfs.append(fixed_point(p / p.sum()))
            radius.append(r)
    return pmfs, radius


def entropy_tensors(model):
    log_s, gp, gr = tables_gaussian()
    zp, zr = tables_z(model)
    flat = lambda pmfs: torch.from_numpy(np.concatenate(pmfs).astype(np.int64)).to(torch.int64)
    return {
        "entropy.log_scales": torch.tensor(log_s, dtype=torch.float32),
        "entropy.gauss_radius": torch.tensor(gr, dtype=torch.int64),
        "entropy.gauss_pmf": flat(gp),
        "entropy.z_radius": torch.tensor(zr, dtype=torch.int64),
        "entropy.z_pmf": flat(zp),
    }


def export(model, path, f16=True):
    """The network for the Rust side. Convolution weights and biases are
    stored as f16 (the loader widens them to f32; issue 20's <= 12 MB bar):
    the rounding costs under 0.01 dB on the held-out crops. The gains stay
    f32: they are tiny and pick the coder's table index, which must not lose
    precision between what was trained and what ships."""
    from safetensors.torch import save_file

    def stored(k, v):
        v = v.detach().float().cpu().contiguous()
        return v.half() if f16 and not k.startswith("gain_") else v

    sd = {k: stored(k, v) for k, v in model.state_dict().items() if not k.startswith("z_prior.")}
    sd.update(entropy_tensors(model))
    meta = {"vaeproxy.config": ",".join(f"{k}={v}" for k, v in model.cfg.items()), "vaeproxy.lambdas": ",".join(f"{l:.6g}" for l in LAMBDAS[: model.cfg["levels"]])}
    tmp = path + ".tmp"
    save_file(sd, tmp, metadata=meta)
    os.replace(tmp, path)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="data/train")
    ap.add_argument("--val", default="data/val")
    ap.add_argument("--ckpt", default="weights/train/codec-v2.pt", help="the one checkpoint file, replaced each time")
    ap.add_argument("--log", default="weights/train/log.csv")
    ap.add_argument("--steps", type=int, default=1_000_000, help="stop after this many steps in all")
    ap.add_argument("--minutes", type=float, default=0, help="stop after this many minutes of this run (0 = no limit)")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--crop", type=int, default=256)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ckpt-secs", type=float, default=600)
    ap.add_argument("--val-every", type=int, default=1000)
    ap.add_argument("--fresh", action="store_true", help="ignore an existing checkpoint (never the default)")
    ap.add_argument("--init-v1", default="weights/vae.safetensors", help="warm start of a fresh run")
    ap.add_argument("--export", help="write the network from the checkpoint as safetensors and exit")
    ap.add_argument("--export-f32", action="store_true", help="--export the weights as f32 (default f16)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--no-compile", action="store_true", help="skip torch.compile (measured 1.2x on this CPU)")
    ap.add_argument("--widths", help="c1,c2,c3,c of a fresh run (an experiment); a resumed run keeps its checkpoint's")
    ap.add_argument("--levels", type=int, default=len(LAMBDAS), help="quality levels of a fresh or grown run")
    ap.add_argument("--grow-from", help="start --ckpt (which must not exist) from this checkpoint widened to --widths; step, RNG and log carry on")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    resume = os.path.exists(a.ckpt) and not a.fresh
    st = torch.load(a.ckpt, map_location=dev, weights_only=False) if resume else None
    grown = None
    if a.grow_from:
        if st is not None:
            sys.exit(f"--grow-from: {a.ckpt} exists; it would be overwritten")
        if not a.widths:
            sys.exit("--grow-from needs --widths")
        grown = torch.load(a.grow_from, map_location=dev, weights_only=False)
    if st is not None:
        # the checkpoint says what it is (older ones: the default widths)
        cfg = {"levels": 8, **st.get("cfg", {})}
    elif a.widths:
        c1, c2, c3, c = (int(v) for v in a.widths.split(","))
        cfg = dict(c1=c1, c2=c2, c3=c3, c=c, levels=a.levels)
    else:
        cfg = {}
    model = Codec(**cfg).to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=a.lr)
    rng = random.Random(a.seed)
    torch.manual_seed(a.seed)
    step = 0
    if grown is not None:
        old_cfg = {"c": 128, "levels": 8, **grown.get("cfg", {})}
        grow(model, grown["model"], old_cfg)
        old_names = [n for n, _ in Codec(**old_cfg).named_parameters()]
        grow_adam(model, opt, grown["opt"], old_names)
        step = grown["step"]
        rng.setstate(grown["py_rng"])
        torch.set_rng_state(grown["torch_rng"])
        print(f"grew {a.grow_from} (step {step}, {old_cfg}) to {model.cfg}", flush=True)
    elif st is not None:
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["opt"])
        step = st["step"]
        rng.setstate(st["py_rng"])
        torch.set_rng_state(st["torch_rng"])
        print(f"resumed {a.ckpt} at step {step}", flush=True)
    elif a.export:
        sys.exit(f"no checkpoint at {a.ckpt}")
    elif a.init_v1 and os.path.exists(a.init_v1) and not a.widths:
        init_from_v1(model, a.init_v1)
    if a.export:
        export(model, a.export, f16=not a.export_f32)
        print(f"wrote {a.export}")
        return
    for g in opt.param_groups:
        g["lr"] = a.lr
    # channels-last convolutions and a compiled step: 0.218 -> 0.150 s per
    # step of 4 x 256^2 on this 2-core CPU (measured; either alone 1.2-1.3x).
    model = model.to(memory_format=torch.channels_last)
    step_fn = model if a.no_compile else torch.compile(model)
    os.makedirs(os.path.dirname(a.ckpt) or ".", exist_ok=True)
    images, val = load_images(a.data), load_images(a.val)
    vb = val_crops(val, 512).to(dev)
    levels = model.cfg["levels"]
    new_log = not os.path.exists(a.log)
    log = open(a.log, "a", newline="")
    w = csv.writer(log)
    if new_log:
        w.writerow(["step", "loss", "bpp", "psnr", "lr", "img_per_s", "minutes"] + [f"val{l}_{m}" for l in range(levels) for m in ("bpp", "psnr")])

    def save():
        tmp = a.ckpt + ".tmp"
        torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step, "py_rng": rng.getstate(), "torch_rng": torch.get_rng_state(), "args": vars(a), "lambdas": LAMBDAS, "cfg": model.cfg}, tmp)
        os.replace(tmp, a.ckpt)
        print(f"checkpoint at step {step}", flush=True)

    stop = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.append(1))
    lam = torch.tensor(LAMBDAS[:levels], device=dev)
    # Each level's loss is scaled by sqrt(lambda_mid / lambda) so the high
    # levels do not drown the low ones in the shared transforms.
    weight = (lam[levels // 2] / lam).sqrt()
    t_start = last_ckpt = time.time()
    seen, acc = 0, [0.0, 0.0, 0.0, 0]
    while step < a.steps and not stop:
        x = batch(images, a.batch, a.crop, rng).to(dev).contiguous(memory_format=torch.channels_last)
        level = torch.tensor([(step * a.batch + i) % levels for i in range(a.batch)], device=dev)
        x_hat, yb, zb = step_fn(x, level)
        px = x.shape[2] * x.shape[3]
        bpp = (yb + zb) / px
        mse = F.mse_loss(x_hat, x, reduction="none").mean(dim=(1, 2, 3)) * 255.0**2
        loss = ((bpp + lam[level] * mse) * weight[level]).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        seen += a.batch
        acc[0] += loss.item(); acc[1] += bpp.mean().item(); acc[2] += (10 * torch.log10(255.0**2 / mse)).mean().item(); acc[3] += 1
        if step % 100 == 0:
            mins = (time.time() - t_start) / 60
            row = [step, f"{acc[0]/acc[3]:.4f}", f"{acc[1]/acc[3]:.4f}", f"{acc[2]/acc[3]:.2f}", f"{a.lr:.1e}", f"{seen/(time.time()-t_start):.2f}", f"{mins:.1f}"]
            if step % a.val_every == 0:
                model.eval()
                v = validate(model, vb)
                model.train()
                row += [f"{x:.4f}" if i % 2 == 0 else f"{x:.2f}" for pair in v for i, x in enumerate(pair)]
            w.writerow(row)
            log.flush()
            print(" ".join(map(str, row)), flush=True)
            acc = [0.0, 0.0, 0.0, 0]
        if a.minutes and time.time() - t_start > a.minutes * 60:
            break
        if time.time() - last_ckpt > a.ckpt_secs:
            save()
            last_ckpt = time.time()
    save()


if __name__ == "__main__":
    main()
