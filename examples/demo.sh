#!/usr/bin/env bash
# The main job on generated data: convert every JPEG of an ImageNet-like shard
# to PPM with ImageMagick, in parallel, streaming from stdin to a re-sharder.
# Usage: examples/demo.sh DIR   (DIR holds imagenet_train-0000.tgz; `make demo` makes it)
set -euo pipefail
dir=${1:-demo}
here=$(cd "$(dirname "$0")/.." && pwd)
shard="$dir/imagenet_train-0000.tgz"

if convert_path=$("$here/.ci/imagemagick" 2>/dev/null); then
  PATH="$(dirname "$convert_path"):$PATH"
  cmd='convert sample.jpg sample.ppm; rm sample.jpg'
else
  echo "demo: ImageMagick not available; converting with Pillow instead" >&2
  cmd="python3 -c 'from PIL import Image; Image.open(\"sample.jpg\").save(\"sample.ppm\")'; rm sample.jpg"
fi

echo "== input: $(tarshow --stats "$shard" 2>/dev/null | sed -n 1p || true)" >&2
echo "== cat $shard | tarproc -p 2 -c '$cmd' -o - | tarsplit -n 50 -o '$dir/ppm-%06d.tar'" >&2
rm -f "$dir"/ppm-*.tar
if command -v tarsplit >/dev/null && tarsplit --version >/dev/null 2>&1; then
  cat "$shard" | tarproc -p 2 -v -c "$cmd" -o - | tarsplit -v -n 50 -o "$dir/ppm-%06d.tar"
else
  cat "$shard" | tarproc -p 2 -v -c "$cmd" -o "$dir/ppm-000000.tar"
fi
echo "== output shards:" >&2
ls -l "$dir"/ppm-*.tar >&2
echo "== first members of $dir/ppm-000000.tar:" >&2
tar tvf "$dir/ppm-000000.tar" | sed -n 1,6p >&2
echo "== the first three keys (tarproc -c 'cat __key__; echo' --count 3):" >&2
tarproc -c 'cat __key__; echo' --count 3 "$dir/ppm-000000.tar"
