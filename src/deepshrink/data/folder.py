"""`folder:PATH` datasets in torchvision's ImageFolder layout, read with Pillow:
`PATH/train/<class>/*.png|jpg|...`, `PATH/test/<class>/...`, optional `PATH/val/<class>/...`.

Classes are the sorted folder names of train/; every image of the dataset must share one size and
one mode (L, RGB, ...), else the first odd file is named. Images load as uint8 N×C×H×W.
"""

from pathlib import Path

import numpy as np
from PIL import Image

from deepshrink.errors import UserError

EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in EXTENSIONS)


def _read(path: Path, want: tuple[tuple[int, int], str] | None) -> tuple[np.ndarray, tuple[tuple[int, int], str]]:
    try:
        with Image.open(path) as img:
            img.load()
            got = (img.size, img.mode)
            if want is not None and got != want:
                raise UserError(f"{path}: {img.size[0]}x{img.size[1]} {img.mode} image; the dataset's images are "
                                f"{want[0][0]}x{want[0][1]} {want[1]}")
            arr = np.asarray(img)
    except UserError:
        raise
    except Exception as e:  # Pillow's decoders raise OSError, SyntaxError, ValueError, struct.error, ... on bad files
        raise UserError(f"{path}: unreadable image ({type(e).__name__})") from None
    if arr.dtype != np.uint8:
        raise UserError(f"{path}: {arr.dtype} pixels ({got[1]} mode); expected 8-bit images")
    return (arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)), got


def _split(folder: Path, classes: list[str], want: tuple[tuple[int, int], str] | None) -> tuple[
        np.ndarray, np.ndarray, tuple[tuple[int, int], str] | None]:
    images, labels = [], []
    for k, name in enumerate(classes):
        if not (folder / name).is_dir():
            continue
        for path in _files(folder / name):
            arr, want = _read(path, want)
            images.append(arr)
            labels.append(k)
    if not images:
        raise UserError(f"{folder}: no images (expected {folder}/<class>/*.png|jpg|...)")
    return np.stack(images), np.asarray(labels, np.int64), want


def load_folder(root: Path) -> dict[str, np.ndarray]:
    if not (root / "train").is_dir() or not (root / "test").is_dir():
        raise UserError(f"{root}: expected train/ and test/ folders of class subfolders (ImageFolder layout)")
    classes = sorted(p.name for p in (root / "train").iterdir() if p.is_dir())
    if len(classes) < 2:
        raise UserError(f"{root / 'train'}: {len(classes)} class folder(s); a classifier needs at least 2")
    for split in ("test", "val"):
        extra = sorted(p.name for p in (root / split).iterdir() if p.is_dir()) if (root / split).is_dir() else []
        unknown = [c for c in extra if c not in classes]
        if unknown:
            raise UserError(f"{root / split / unknown[0]}: class not among train/'s ({', '.join(classes)})")
    out: dict[str, np.ndarray] = {}
    want = None
    for split in ("train", "val", "test"):
        if split == "val" and not (root / "val").is_dir():
            continue
        out[f"{split}_x"], out[f"{split}_y"], want = _split(root / split, classes, want)
    return out
