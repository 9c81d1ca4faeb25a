"""`deepshrink search` and `deepshrink sensitivity` (SPEC §13): parse and call, nothing else."""

from pathlib import Path
from typing import Annotated

import typer

from deepshrink import api
from deepshrink.api.searches import parse_space
from deepshrink.cli_options import DataDir, Device, Quiet, Seed, check_device, console, default

Checkpoint = Annotated[Path, typer.Argument(help="A .safetensors checkpoint (its .json manifest beside it).")]
Dataset = Annotated[str | None, typer.Option("--dataset", help="Data to search on (default: the checkpoint's).")]


def search(
    checkpoint: Checkpoint,
    budget: Annotated[str, typer.Option("--budget", help="Ceilings, e.g. drop<=0.5,bytes<=20000 (metrics: drop, "
                                        "bytes, us_b1, us_b256, flash, ram, instructions).")] = "",
    minimize: Annotated[str | None, typer.Option("--minimize", help="The metric to make smallest.")] = None,
    pareto: Annotated[str | None, typer.Option("--pareto", help="Two metrics, e.g. bytes,drop: their front.")] = None,
    trials: Annotated[int, typer.Option("--trials", help="Trials in all (a resumed search counts its "
                                        "own).")] = default(api.search, "trials"),
    out: Annotated[Path | None, typer.Option("--out", help="Run directory (default runs/search).")] = None,
    fresh: Annotated[bool, typer.Option("--fresh", help="Start the trials over (cached steps are kept).")] = False,
    executor: Annotated[str, typer.Option("--executor", help="local (this machine) or ray (a Ray cluster): where "
                                          "trials run.")] = default(api.search, "executor"),
    jobs: Annotated[int, typer.Option("--jobs", help="Trials evaluated at once (the same seed and jobs draw the "
                                      "same trials on either executor).")] = default(api.search, "jobs"),
    address: Annotated[str | None, typer.Option("--address", help="Ray cluster address (else $RAY_ADDRESS, "
                                                "else a local Ray).")] = None,
    space: Annotated[list[str] | None, typer.Option("--space", help="Narrow or widen the space, KEY=V1,V2 (the "
                                                    "keys of a recipe's [search] section), e.g. structured=0.4,0.8 "
                                                    "or structured_epochs=6,12; repeatable.")] = None,
    dataset: Dataset = None, data_dir: DataDir = None, device: Device = "auto", seed: Seed = 0, quiet: Quiet = False,
) -> None:
    """Search pipelines for the best model within a budget; every trial measured as shipped on the
    validation split, the chosen ones re-measured on the test set (trials.csv, pareto.csv, results.csv)."""
    result = api.search(checkpoint, budget, minimize, pareto, trials, out, seed, space=parse_space(space or []),
                        dataset=dataset, data_dir=data_dir, fresh=fresh, device=check_device(device), quiet=quiet,
                        executor=executor, jobs=jobs, address=address)
    c = console()
    done = sum(r["state"] == "COMPLETE" for r in result.trials)
    c.print(f"{len(result.trials)} trials ({done} measured) -> {result.out / 'trials.csv'}")
    if not result.feasible:
        c.print(f"no trial fits {result.budget.describe()}; the closest:")
    for trial, row in zip(result.picked, result.chosen, strict=True):
        miss = f"; misses {trial['misses']} (validation)" if trial["misses"] else ""
        c.print(f"trial {trial['number']} {row['variant']}: {row['size_bytes']} bytes, test accuracy "
                f"{float(row['accuracy_pct']):.2f}% (baseline {float(row['baseline_accuracy_pct']):.2f}%){miss}")


def sensitivity(
    checkpoint: Checkpoint,
    drop: Annotated[float, typer.Option("--drop", help="Accuracy points a layer may lose (no "
                                        "retraining).")] = default(api.sensitivity, "drop"),
    out: Annotated[Path | None, typer.Option("--out", help="Folder for sensitivity.csv / .png "
                                             "(default runs/sensitivity).")] = None,
    dataset: Dataset = None, data_dir: DataDir = None, quiet: Quiet = False,
) -> None:
    """Per-layer accuracy against sparsity on the validation split (Han et al. 2015, Fig. 5), and the
    per-layer fractions it suggests for prune.unstructured."""
    res = api.sensitivity(checkpoint, dataset=dataset, data_dir=data_dir, drop=drop, out=out, quiet=quiet)
    c = console()
    c.print(f"curves: {res['csv']}, plot: {res['plot']}")
    c.print(f"suggested (within {drop:g} points per layer, without retraining): --step {res['step']}")
