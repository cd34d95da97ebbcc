#!/usr/bin/env bash
# Fetches the training photographs from Debian packages into data/{train,val}.
#
# Only packages holding real photographs are used (looked at by hand); most
# wallpaper packages are rendered art, which would teach the codec the wrong
# statistics. The Kodak set is never used here: it is for reporting only.
#
# Output: data/train/*.png, data/val/*.png (longest side <= 1024 px, so the
# JPEG blocking of the sources is mostly averaged away), data/SOURCES.tsv
# (file, package, version, original path) and data/licenses/<package>.copyright.
set -euo pipefail
cd "$(dirname "$0")/.."
out=data
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

packages=(endless-sky-high-dpi mate-backgrounds plasma-workspace-wallpapers lomiri-wallpapers-16.04
  lomiri-wallpapers-20.04 python3-skimage)
# Looked at and left out as rendered art, not photographs: gnome-backgrounds 43
# (all), ukui-wallpapers (all), lomiri-wallpapers-20.04 except Kleiber.
# Plasma ships each wallpaper at many sizes; these are the photographs among them.
plasma_photos=(Autumn BytheWater ColdRipple ColorfulCups DarkestHour EveningGlow FallenLeaf Grey Kite OneStandsOut Path summer_1am)
# scikit-image's colour photographs (its data/README.txt gives each one's
# licence: public domain or CC0); the rest are greyscale, textures, test charts,
# or (the Middlebury stereo pair) under research-only terms.
skimage_photos=(astronaut.png chelsea.png coffee.png rocket.jpg)

python3 -c 'import PIL' 2>/dev/null || python3 -m pip install -q pillow

mkdir -p "$out/licenses"
(cd "$work" && apt-get download "${packages[@]}" >/dev/null 2>&1)
list="$work/list.tsv"
: > "$list"
for p in "${packages[@]}"; do
  deb=$(ls "$work"/"${p}"_*.deb)
  ver=$(dpkg-deb -f "$deb" Version)
  dpkg-deb -x "$deb" "$work/$p"
  cp "$work/$p/usr/share/doc/$p/copyright" "$out/licenses/$p.copyright"
  if [ "$p" = python3-skimage ]; then
    # each data image's licence is in its loader's docstring
    cp "$work/$p/usr/lib/python3/dist-packages/skimage/data/_fetchers.py" "$out/licenses/$p.data-licences.py"
  fi
  case "$p" in
    endless-sky-high-dpi)
      find "$work/$p/usr/share/games/endless-sky/plugins/endless-sky-high-dpi/images/land" -name '*.jpg' ;;
    mate-backgrounds)
      find "$work/$p/usr/share/backgrounds/mate/nature" -name '*.jpg' ;;
    plasma-workspace-wallpapers)
      for w in "${plasma_photos[@]}"; do
        # the largest JPEG rendition of each photo
        ls -S "$work/$p/usr/share/wallpapers/$w/contents/images/"*.jpg | head -1
      done ;;
    lomiri-wallpapers-16.04)
      find "$work/$p/usr/share/backgrounds" -maxdepth 1 -name '*.jpg' ;;
    lomiri-wallpapers-20.04)
      echo "$work/$p/usr/share/backgrounds/Kleiber_by_Lukas_Baubkus.jpg" ;;
    python3-skimage)
      for f in "${skimage_photos[@]}"; do echo "$work/$p/usr/lib/python3/dist-packages/skimage/data/$f"; done ;;
  esac | sort | while read -r f; do printf '%s\t%s\t%s\n' "$p" "$ver" "$f"; done >> "$list"
done

python3 - "$list" "$out" "$work" <<'PY'
import sys, os
from PIL import Image
lst, out, work = sys.argv[1:4]
os.makedirs(f"{out}/train", exist_ok=True)
os.makedirs(f"{out}/val", exist_ok=True)
rows = [l.rstrip("\n").split("\t") for l in open(lst)]
with open(f"{out}/SOURCES.tsv", "w") as src:
    src.write("file\tsplit\tpackage\tversion\tpath\n")
    for i, (pkg, ver, path) in enumerate(rows):
        # every 25th photo is held out for validation (model selection never sees Kodak)
        split = "val" if i % 25 == 7 else "train"
        name = f"{pkg}-{i:04d}.png"
        im = Image.open(path).convert("RGB")
        s = 1024 / max(im.size)
        if s < 1:
            im = im.resize((round(im.size[0] * s), round(im.size[1] * s)), Image.LANCZOS)
        im.save(f"{out}/{split}/{name}")
        src.write(f"{name}\t{split}\t{pkg}\t{ver}\t{path.replace(work + '/' + pkg, '')}\n")
print(f"{len(rows)} photos -> {out}/train, {out}/val")
PY
