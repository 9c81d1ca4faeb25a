"""`deepshrink search` and `deepshrink sensitivity` (SPEC §13): parse and call, nothing else."""

from pathlib import Path
from typing import Annotated

import typer

from deepshrink.cli_options import DataDir, Device, Quiet, Seed, check_device, console
from deepshrink.errors import UserError

Checkpoint = Annotated[Path, typer.Argument(help="A .safetensors checkpoint (its .json manifest beside it).")]
Dataset = Annotated[str | None, typer.Option("--dataset", help="Data to search on (default: the checkpoint's).")]


def search(
    checkpoint: Checkpoint,
    budget: Annotated[str, typer.Option("--budget", help="Ceilings, e.g. drop<=0.5,bytes<=20000 (metrics: drop, "
                                        "bytes, us_b1, us_b256, flash, ram, instructions).")] = "",
    minimize: Annotated[str | None, typer.Option("--minimize", help="The metric to make smallest.")] = None,
    pareto: Annotated[str | None, typer.Option("--pareto", help="Two metrics, e.g. bytes,drop: their front.")] = None,
    trials: Annotated[int, typer.Option("--trials", help="Trials in all (a resumed search counts its own).")] = 40,
    out: Annotated[Path | None, typer.Option("--out", help="Run directory (default runs/search).")] = None,
    fresh: Annotated[bool, typer.Option("--fresh", help="Start the trials over (cached steps are kept).")] = False,
    executor: Annotated[str, typer.Option("--executor", help="local (this machine) or ray (a Ray cluster): where "
                                          "trials run.")] = "local",
    jobs: Annotated[int, typer.Option("--jobs", help="Trials evaluated at once (the same seed and jobs draw the "
                                      "same trials on either executor).")] = 1,
    address: Annotated[str | None, typer.Option("--address", help="Ray cluster address (else $RAY_ADDRESS, "
                                                "else a local Ray).")] = None,
    space: Annotated[list[str] | None, typer.Option("--space", help="Narrow or widen the space, KEY=V1,V2 (the "
                                                    "keys of a recipe's [search] section), e.g. structured=0.4,0.8 "
                                                    "or structured_epochs=6,12; repeatable.")] = None,
    dataset: Dataset = None, data_dir: DataDir = None, device: Device = "auto", seed: Seed = 0, quiet: Quiet = False,
) -> None:
    """Search pipelines for the best model within a budget; every trial measured as shipped on the
    validation split, the chosen ones re-measured on the test set (trials.csv, pareto.csv, results.csv)."""
    from deepshrink.api_search import parse_space
    from deepshrink.api_search import search as run

    out = out or Path("runs") / "search"
    result = run(checkpoint, budget, minimize, pareto, trials, out, seed, space=parse_space(space or []),
                 dataset=dataset, data_dir=data_dir,
                 fresh=fresh, device=check_device(device), quiet=quiet, executor=executor, jobs=jobs, address=address)
    c = console()
    done = sum(r["state"] == "COMPLETE" for r in result.trials)
    c.print(f"{len(result.trials)} trials ({done} measured) -> {out / 'trials.csv'}")
    if not result.feasible:
        c.print(f"no trial fits {result.budget.describe()}; the closest:")
    for trial, row in zip(result.picked, result.chosen, strict=True):
        miss = f"; misses {trial['misses']} (validation)" if trial["misses"] else ""
        c.print(f"trial {trial['number']} {row['variant']}: {row['size_bytes']} bytes, test accuracy "
                f"{float(row['accuracy_pct']):.2f}% (baseline {float(row['baseline_accuracy_pct']):.2f}%){miss}")


def sensitivity(
    checkpoint: Checkpoint,
    drop: Annotated[float, typer.Option("--drop", help="Accuracy points a layer may lose (no retraining).")] = 0.5,
    out: Annotated[Path | None, typer.Option("--out", help="Folder for sensitivity.csv / .png "
                                             "(default runs/sensitivity).")] = None,
    dataset: Dataset = None, data_dir: DataDir = None,
) -> None:
    """Per-layer accuracy against sparsity on the validation split (Han et al. 2015, Fig. 5), and the
    per-layer fractions it suggests for prune.unstructured."""
    from deepshrink.api_search import sensitivity as run

    if not 0.0 <= drop <= 100.0:
        raise UserError(f"--drop {drop}: accuracy points, between 0 and 100")
    out = out or Path("runs") / "sensitivity"
    res = run(checkpoint, dataset=dataset, data_dir=data_dir, drop=drop, out=out)
    c = console()
    c.print(f"curves: {res['csv']}, plot: {res['plot']}")
    c.print(f"suggested (within {drop:g} points per layer, without retraining): --step {res['step']}")
