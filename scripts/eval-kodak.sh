#!/usr/bin/env bash
# Evaluates the shipped weights on Kodak at every quality level and prints the
# markdown table used in README.md and weights/README.md; also builds the
# side-by-side picture (weights/kodak-side-by-side.png) from kodim23.
# Usage: scripts/eval-kodak.sh [KODAK_DIR]   (default ../shared/kodak)
set -euo pipefail
cd "$(dirname "$0")/.."
kodak=${1:-../shared/kodak}
out=target/kodak-eval
rm -rf "$out/recon" && mkdir -p "$out/recon"  # no stale levels in the picture
cargo build --release --quiet
bin=target/release/vaeproxy
levels=$($bin info | sed -n 's/^levels=//p')
echo "| level | bpp | PSNR (dB) | MS-SSIM | encode ms | decode ms |"
echo "|---|---|---|---|---|---|"
for q in $(seq 1 "$levels"); do
  line=$(RAYON_NUM_THREADS=1 $bin eval --images "$kodak" --quality "$q" --csv "$out/q$q.csv" --save "$out/recon" | tail -1)
  eval "$(echo "$line" | sed 's/^mean //; s/ /;/g')"
  printf '| %s | %s | %s | %s | %s | %s |\n' "$q" "$bpp" "$psnr" "$ms_ssim" "$enc_ms" "$dec_ms"
  awk -F, '$1=="kodim23.png"{printf "%.3f", $3}' "$out/q$q.csv" > "$out/recon/bpp.q$q"
done
python3 scripts/side_by_side.py "$kodak/kodim23.png" "$out/recon" weights/kodak-side-by-side.png >&2
