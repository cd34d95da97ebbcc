#!/usr/bin/env python3
"""Builds the side-by-side picture for weights/README.md: one crop of a Kodak
image, original then the reconstruction at every quality level, each labelled
with its real bpp. Usage:
  scripts/side_by_side.py IMAGE.png RECON_DIR OUT.png  (RECON_DIR from `vaeproxy eval --save`)
"""
import glob, os, re, sys
from PIL import Image, ImageDraw

src, recon_dir, out = sys.argv[1:4]
stem = os.path.splitext(os.path.basename(src))[0]
box = (256, 128, 512, 384)
tiles = [("original", Image.open(src).convert("RGB").crop(box))]
for f in sorted(glob.glob(os.path.join(recon_dir, f"{stem}.q*.png"))):
    q = re.search(r"\.q(\d+)\.png$", f).group(1)
    label = f"q{q}"
    bpp_file = os.path.join(recon_dir, f"bpp.q{q}")
    if os.path.exists(bpp_file):
        label += " " + open(bpp_file).read().strip() + " bpp"
    tiles.append((label, Image.open(f).convert("RGB").crop(box)))
w, h = 256, 256
sheet = Image.new("RGB", (w * len(tiles), h + 18), "white")
d = ImageDraw.Draw(sheet)
for i, (label, t) in enumerate(tiles):
    sheet.paste(t, (i * w, 18))
    d.text((i * w + 4, 3), label, fill="black")
sheet.save(out)
print(f"wrote {out}")
