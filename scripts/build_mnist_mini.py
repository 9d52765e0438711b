"""Build ``ganbench/assets/mnist_mini.npz``: a class-balanced MNIST subset that ships with the package.

Reads the rasbt/mnist-pngs tarball (``train/<digit>/<id>.png``, ``test/<digit>/<id>.png``) without unpacking it and
picks, per digit, ``--per-class`` training images and ``--per-class // 10`` test images: the file names of one digit
are sorted, then a seeded permutation (``numpy.random.default_rng(seed)``, drawn in the order train 0..9, test 0..9)
chooses which; the chosen indices are kept in sorted-name order. Stored arrays (uint8):
``images`` (N, 28, 28), ``labels`` (N,), ``test_images`` (M, 28, 28), ``test_labels`` (M,), plus ``train_names`` and
``test_names`` (the PNG paths inside the tarball, for provenance).

    python scripts/build_mnist_mini.py --src ../shared/data/mnist_png.tar.xz \
        --out ganbench/assets/mnist_mini.npz --per-class 1000 --seed 0
"""

import argparse
import io
import tarfile
from collections import defaultdict
from pathlib import Path

import numpy as np
from PIL import Image


def read_pngs(src: Path) -> dict[str, dict[int, dict[str, bytes]]]:
    """Return ``{split: {digit: {member name: png bytes}}}`` from one streaming pass over the tarball."""
    out: dict[str, dict[int, dict[str, bytes]]] = defaultdict(lambda: defaultdict(dict))
    with tarfile.open(src, "r|*") as tar:
        for member in tar:
            parts = member.name.split("/")
            if member.isfile() and len(parts) == 3 and parts[2].endswith(".png"):
                out[parts[0]][int(parts[1])][member.name] = tar.extractfile(member).read()
    return out


def pick(pngs: dict[int, dict[str, bytes]], per_class: int, rng: np.random.Generator):
    """Choose ``per_class`` images of each digit; return (images uint8 (N,28,28), labels uint8 (N,), names)."""
    images, labels, names = [], [], []
    for digit in range(10):
        all_names = sorted(pngs[digit])
        chosen = np.sort(rng.permutation(len(all_names))[:per_class])
        for i in chosen:
            img = Image.open(io.BytesIO(pngs[digit][all_names[i]])).convert("L")
            assert img.size == (28, 28), (all_names[i], img.size)
            images.append(np.asarray(img, dtype=np.uint8))
            labels.append(digit)
            names.append(all_names[i])
    return np.stack(images), np.asarray(labels, dtype=np.uint8), np.asarray(names)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--src", type=Path, required=True, help="mnist_png.tar.xz")
    parser.add_argument("--out", type=Path, required=True, help="output .npz")
    parser.add_argument("--per-class", type=int, default=1000, help="training images per digit")
    parser.add_argument("--test-per-class", type=int, default=None, help="test images per digit (per-class // 10)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    pngs = read_pngs(args.src)
    rng = np.random.default_rng(args.seed)
    test_per_class = args.per_class // 10 if args.test_per_class is None else args.test_per_class
    images, labels, train_names = pick(pngs["train"], args.per_class, rng)
    test_images, test_labels, test_names = pick(pngs["test"], test_per_class, rng)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, images=images, labels=labels, test_images=test_images, test_labels=test_labels,
                        train_names=train_names, test_names=test_names)
    print(f"wrote {args.out}: {len(images)} train + {len(test_images)} test digits, "
          f"{args.out.stat().st_size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
