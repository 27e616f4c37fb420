"""Make deterministic ImageNet-like shards: real JPEGs (Pillow) + cls + json.

Used by the tests' fixtures, the benchmarks and ``make demo``:

    python tests/makeshards.py --samples 200 demo/imagenet_train-0000.tgz

Keys look like ImageNet's (``n03788365_17158``); each sample has the fields
``cls`` (class index as text), ``jpg`` (a real JPEG) and ``json``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from tarproc.io.sinks import open_sink  # noqa: E402

SYNSETS = ["n01440764", "n02102040", "n02979186", "n03000684", "n03028079", "n03394916", "n03417042", "n03425413",
           "n03445777", "n03888605"]


def make_jpeg(rng: random.Random, width: int, height: int, quality: int = 85) -> bytes:
    """A real JPEG: a colour gradient with noise (compresses like a photo)."""
    from PIL import Image

    base = Image.linear_gradient("L").resize((width, height))
    noise = Image.effect_noise((width, height), rng.uniform(20, 80))
    r = Image.blend(base, noise, 0.5)
    g = noise.rotate(90, expand=False)
    b = base.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    image = Image.merge("RGB", (r, g, b))
    out = io.BytesIO()
    image.save(out, "JPEG", quality=quality)
    return out.getvalue()


def imagenet_samples(n: int, seed: int = 0, size: tuple[int, int] = (160, 120), distinct: int = 64):
    """Yield ``n`` sample dicts; ``distinct`` different JPEGs are made and
    reused (with different keys) so that large shards are quick to build."""
    rng = random.Random(seed)
    jpegs = [make_jpeg(rng, size[0] + rng.randrange(0, 32), size[1] + rng.randrange(0, 24)) for _ in range(min(n, distinct))]
    for i in range(n):
        cls = i % len(SYNSETS)
        key = f"{SYNSETS[cls]}_{10000 + i}"
        meta = {"synset": SYNSETS[cls], "index": i, "label": cls}
        yield {
            "__key__": key,
            "cls": str(cls).encode(),
            "jpg": jpegs[i % len(jpegs)],
            "json": json.dumps(meta, sort_keys=True).encode(),
        }


def write_shard(path: str, n: int, seed: int = 0, size: tuple[int, int] = (160, 120), distinct: int = 64) -> str:
    """Write an ImageNet-like shard of ``n`` samples to ``path`` (compression
    from the suffix); returns ``path``."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open_sink(path) as sink:
        for sample in imagenet_samples(n, seed, size, distinct):
            sink.write(sample)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output")
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--height", type=int, default=240)
    args = parser.parse_args()
    write_shard(args.output, args.samples, args.seed, (args.width, args.height))
    print(f"wrote {args.output}: {args.samples} samples", file=sys.stderr)


if __name__ == "__main__":
    main()
