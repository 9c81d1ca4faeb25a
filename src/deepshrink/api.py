"""The public verbs, one call each: `train`, `compress`, `measure`, `study`. The CLI is a thin layer
over these; they return the rows written to the run directory (SPEC §7)."""

from pathlib import Path
from typing import Any

from deepshrink.bench import bench_artifact
from deepshrink.config import default_train
from deepshrink.study.run import run_compress, run_study, run_train
from deepshrink.variant import slug


def train(dataset: str, model: str, out: Path | None = None, epochs: int | None = None, seed: int = 0,
          data_dir: Path | None = None, device: str = "auto", quiet: bool = True) -> dict[str, Any]:
    """Train one baseline with the tuned defaults, export and measure it; its results.csv row."""
    cfg = default_train(dataset, model, epochs=epochs, seed=seed)
    return run_train(dataset, model, cfg, out or Path("runs") / slug(f"train-{dataset}-{model}"), data_dir, device,
                     quiet=quiet)


def compress(checkpoint: Path, steps: list[str], out: Path | None = None, seed: int = 0,
             data_dir: Path | None = None, device: str = "auto", quiet: bool = True) -> dict[str, Any]:
    """Apply a chain of steps to a trained checkpoint; the compressed variant's results.csv row."""
    return run_compress(Path(checkpoint), steps, out or Path("runs") / "compress", data_dir, device, quiet=quiet,
                        seed=seed)


def measure(artifact: Path, runtime: str = "onnxruntime", threads: int = 1, batch: int = 256,
            data_dir: Path | None = None, device: str = "cpu", quiet: bool = True) -> list[dict[str, Any]]:
    """Time one artifact on its dataset's test set: latency.csv-style rows (batched and batch-1)."""
    return bench_artifact(Path(artifact), runtime, threads, batch, data_dir, device, quiet)


def study(recipe: str, out: Path | None = None, jobs: int | None = None, overrides: tuple[str, ...] = (),
          fresh: bool = False, data_dir: Path | None = None, device: str = "auto",
          quiet: bool = True) -> tuple[Path, dict[str, str]]:
    """Run a whole study from a recipe (resumes by default); (run directory, variant -> status)."""
    return run_study(recipe, out, data_dir, device, jobs, overrides, fresh, quiet)
