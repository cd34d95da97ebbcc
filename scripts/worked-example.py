#!/usr/bin/env python3
"""Regenerates the worked example in docs/latent-format.md with the shipped
weights: a 32x16 crop of tests/data/canyon.jpg encoded at quality 1.
Run after the weights change (tests/client.rs decodes the example)."""
import re, struct, subprocess, tempfile, os
from PIL import Image

root = os.path.join(os.path.dirname(__file__), "..")
bin_ = os.path.join(root, "target/release/vaeproxy")
with tempfile.TemporaryDirectory() as d:
    Image.open(os.path.join(root, "tests/data/canyon.jpg")).convert("RGB").crop((0, 0, 32, 16)).save(f"{d}/in.png")
    subprocess.run([bin_, "encode", f"{d}/in.png", f"{d}/x.vlat", "--quality", "1"], check=True)
    subprocess.run([bin_, "decode", f"{d}/x.vlat", f"{d}/out.png"], check=True)
    b = open(f"{d}/x.vlat", "rb").read()
    img = Image.open(f"{d}/out.png").convert("RGB")
px = list(img.getdata())
mean = [sum(p[c] for p in px) / len(px) for c in range(3)]
lines = [f"{i:04x}: " + " ".join(f"{x:02x}" for x in b[i:i + 16]) for i in range(0, len(b), 16)]
n = struct.unpack_from("<I", b, 40)[0]
text = f"""A 32x16 crop of `tests/data/canyon.jpg`, quality 1, shipped weights
({len(b)} bytes; `scripts/worked-example.py` regenerates it):

```hex
{chr(10).join(lines)}
```

- `56 4c 41 54` magic `VLAT`; `01` version 1; `{b[5]:02x}` quality {b[5]}; `00 00` reserved
- bytes 8..24: model id `{b[8:24].hex()}`
- `{b[24:28].hex(' ')}` width {struct.unpack_from('<I', b, 24)[0]}; `{b[28:32].hex(' ')}` height {struct.unpack_from('<I', b, 28)[0]}
- `{b[32:34].hex(' ')}` Z = {struct.unpack_from('<H', b, 32)[0]}; `{b[34:36].hex(' ')}` h = {struct.unpack_from('<H', b, 34)[0]}; `{b[36:38].hex(' ')}` w = {struct.unpack_from('<H', b, 36)[0]}; `00 00` reserved
- `{b[40:44].hex(' ')}` payload length {n}: {n // 4} ANS words
- last 4 bytes: CRC-32 `{b[-4:].hex(' ')}`

Decodes to: {img.width}x{img.height} pixels, mean RGB ({mean[0]:.1f}, {mean[1]:.1f}, {mean[2]:.1f}).
"""
p = os.path.join(root, "docs/latent-format.md")
doc = open(p).read()
start = doc.index("## Worked example") + len("## Worked example\n\n")
end = doc.index("## Versioning")
open(p, "w").write(doc[:start] + text + "\n" + doc[end:])
print(text)
