#!/usr/bin/env bash
# Regenerate the README pictures (docs/images/*.png) from docs/images/scene.png with the shipped
# tiny-synthetic merged model: `bash scripts/readme_images.sh` (after `make env`).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
IMG=docs/images/scene.png
LABELS=circle,square,triangle,star,hexagon,ring,cross,heart,crescent,arrow,ellipse,pentagon
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
$BIN/samclip segment $IMG --point 135,144 --out "$tmp/segment"
$BIN/samclip label $IMG --box 180,0,256,110 --labels $LABELS --out "$tmp/label"
$BIN/samclip semseg $IMG --labels $LABELS --refine --out "$tmp/semseg"
$BIN/samclip everything $IMG --labels $LABELS --out "$tmp/everything"
$BIN/samclip classify $IMG --labels $LABELS --out "$tmp/classify"
for task in segment label semseg everything classify; do
  cp "$tmp/$task/scene.png" "docs/images/$task.png"
done
echo "updated docs/images/{segment,label,semseg,everything,classify}.png"
if [ -x /usr/bin/chromium ]; then
  $BIN/python scripts/page_screenshot.py  # docs/images/page.png: the web page after one click
else
  echo "no /usr/bin/chromium: docs/images/page.png not regenerated (make test installs it)"
fi
