#!/usr/bin/env python3
"""Puts `vaeproxy eval-v2` rows beside WebP and AVIF at the same bpp.

    target/release/vaeproxy eval-v2 --network N --images ../shared/kodak > out.txt
    python3 scripts/rd-compare.py out.txt ../shared/kodak/reference-curves.csv

Reference curves are interpolated linearly in bpp (extrapolated from the two
nearest points outside their range, marked with *). Prints, per level: bpp,
our PSNR / MS-SSIM, WebP's and AVIF s6 4:4:4's at that bpp, and the gaps.
"""
import csv, sys


def curve(rows, codec):
    pts = sorted((float(r["bpp"]), float(r["psnr_rgb"]), float(r["ms_ssim"])) for r in rows if r["codec"] == codec)
    return pts


def at(pts, bpp):
    """(psnr, ms_ssim, extrapolated) at bpp on a piecewise-linear curve."""
    out = bpp < pts[0][0] or bpp > pts[-1][0]
    i = 0
    while i < len(pts) - 2 and pts[i + 1][0] < bpp:
        i += 1
    (b0, p0, s0), (b1, p1, s1) = pts[i], pts[i + 1]
    t = (bpp - b0) / (b1 - b0)
    return p0 + t * (p1 - p0), s0 + t * (s1 - s0), out


def main():
    ours = []
    for line in open(sys.argv[1]):
        f = line.split()
        if f and f[0].isdigit():
            ours.append((int(f[0]), float(f[1]), float(f[2]), float(f[3])))
    ref = list(csv.DictReader(open(sys.argv[2])))
    webp, avif = curve(ref, "webp"), curve(ref, "avif-s6-444")
    print("level  bpp     PSNR   MS-SSIM | WebP PSNR  MS-SSIM  dPSNR  | AVIF PSNR  MS-SSIM  dPSNR")
    for lvl, bpp, psnr, ms in ours:
        wp, ws, wx = at(webp, bpp)
        ap, as_, ax = at(avif, bpp)
        print(f"{lvl:>5}  {bpp:.4f}  {psnr:.2f}  {ms:.4f}  | {wp:6.2f}{'*' if wx else ' '}   {ws:.4f}  {psnr - wp:+.2f}  | "
              f"{ap:6.2f}{'*' if ax else ' '}   {as_:.4f}  {psnr - ap:+.2f}")


if __name__ == "__main__":
    main()
