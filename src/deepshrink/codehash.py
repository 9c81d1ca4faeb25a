"""The version of deepshrink's own source that computed a cached result: part of every cache key, so
editing the code recomputes what it would change (study steps and baselines, memoized student runs)."""

import hashlib
from pathlib import Path

from deepshrink._version import __version__

_CODE: list[str] = []  # pinned once per study: a commit landing mid-run must not change the keys
_DOWNSTREAM = ("report", "templates")  # readers of results, not producers


def code_version() -> str:
    """A hash of the package's own source (code, recipes): unlike the git commit it sees uncommitted
    edits and ignores commits that touch only docs or tests. The report and its templates are left out:
    they only read results, so editing them must not retrain anything."""
    if not _CODE:
        root = Path(__file__).resolve().parent
        h = hashlib.sha256(__version__.encode())
        for path in sorted(p for p in root.rglob("*") if p.suffix in (".py", ".toml") and p.is_file()
                           and p.relative_to(root).parts[0] not in _DOWNSTREAM):
            h.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
        _CODE.append(f"{__version__}+src.{h.hexdigest()[:12]}")
    return _CODE[0]


def pin_code_version(version: str) -> None:
    """Workers use the parent's code version, read once when the study started."""
    _CODE[:] = [version]
