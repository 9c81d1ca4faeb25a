"""The report: a pure function of a run directory's files (results.csv, latency.csv, layers.csv,
provenance.json, and the artifacts' container headers). `deepshrink report RUN_DIR` re-renders it
without training anything.
"""

import base64
import json
from pathlib import Path
from typing import Any

import jinja2

from deepshrink.checkpoint import atomic_write_bytes
from deepshrink.errors import UserError
from deepshrink.measure.energy import DEFAULT_SRAM_BUDGET_BYTES
from deepshrink.report.conclusions import conclusions_table
from deepshrink.report.mcu import mcu_figure, mcu_table
from deepshrink.report.plots import Figure, bits_figure, figure1, pareto_figures
from deepshrink.report.reference_gaps import gaps_table
from deepshrink.report.rundata import RunData
from deepshrink.report.search import search_figure, search_table
from deepshrink.report.tables import READING, Table, build_tables
from deepshrink.results import read_rows

JPEG_NOTE = ("Our CIFAR-10 copy is decoded from a JPEG quality-75 copy of the dataset, not the original "
             "pixels, so CIFAR-10 accuracies run a few points under results on the original images.")


def _provenance(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "provenance.json"
    try:
        return dict(json.loads(path.read_text())) if path.exists() else {}
    except (json.JSONDecodeError, OSError):
        return {}


def load_run(run_dir: Path) -> RunData:
    if not (run_dir / "results.csv").exists():
        raise UserError(f"{run_dir}: no results.csv in this run directory")
    return RunData(read_rows(run_dir / "results.csv"), read_rows(run_dir / "latency.csv"),
                   read_rows(run_dir / "layers.csv"), run_dir, _provenance(run_dir))


def sram_budget(prov: dict[str, Any]) -> int:
    """The on-chip budget the run's energy estimates used: the recipe's measure.sram_kb (KiB), 0 or
    absent meaning the default."""
    recipe = prov.get("recipe") or {}
    kb = (recipe.get("measure") or {}).get("sram_kb", 0) if isinstance(recipe, dict) else 0
    return int(kb) * 1024 if kb else DEFAULT_SRAM_BUDGET_BYTES


def _env() -> jinja2.Environment:
    return jinja2.Environment(loader=jinja2.PackageLoader("deepshrink", "templates"),
                              autoescape=jinja2.select_autoescape(["html"]), keep_trailing_newline=True,
                              trim_blocks=True, lstrip_blocks=True,
                              undefined=jinja2.StrictUndefined)


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|")


def _numbered(figs: list[Figure]) -> list[dict[str, str]]:
    """Captions numbered in page order; Figure 1 is the reference's (temperature) figure when present."""
    start = 1 if figs and figs[0].path.name.startswith("figure1") else 2
    return [{"name": f.path.stem, "rel": f"figures/{f.path.name}", "caption": f"Figure {i}. {f.caption}",
             "b64": base64.b64encode(f.path.read_bytes()).decode()} for i, f in enumerate(figs, start=start)]


def study_time(prov: dict[str, Any]) -> list[str]:
    """The reading line on how long the study took, from provenance.json (none for train/compress runs)."""
    seconds, ran, total = (prov.get(k) for k in ("study_seconds", "study_variants_run", "study_variants"))
    if not isinstance(seconds, int | float) or not isinstance(ran, int) or not isinstance(total, int):
        return []
    resumed = f" (resumed: the other {total - ran:,} were done before and are not counted)" if ran < total else ""
    plural = "s" if ran != 1 else ""
    return [f"Study time: {seconds / 60:.1f} min wall for the {ran:,} variant{plural} this invocation ran{resumed}, "
            f"{prov.get('jobs', 1)} job(s) on {(prov.get('machine') or {}).get('cpu', 'this machine')}."]


def render_report(run_dir: Path) -> tuple[Path, Path]:
    """Write report.md, report.html (figures embedded as base64, no network) and figures/*.png."""
    data = load_run(run_dir)
    figdir = run_dir / "figures"
    figdir.mkdir(parents=True, exist_ok=True)
    extra = [figure1(data, figdir), bits_figure(data, figdir), mcu_figure(data, figdir), search_figure(data, figdir)]
    figs = [f for f in extra if f] + pareto_figures(data, figdir)
    tables: list[Table] = build_tables(data, sram_budget(data.provenance))
    # The gaps section follows the reference's tables it draws on, before the seed and variant lists.
    at = next((i for i, t in enumerate(tables) if t.id in ("seeds", "all")), len(tables))
    tables.insert(at, gaps_table(tables[:at], data))
    if (mcu := mcu_table(data)).rows:
        tables.insert(at + 1, mcu)
    tables.insert(0, conclusions_table(data))  # what each technique bought, before the tables behind it
    if (search := search_table(data)) is not None:  # a `deepshrink search` run: its section leads
        tables.insert(0, search)
    has_cifar = any(r.get("dataset") == "cifar10" for r in data.results)
    ctx = {"tables": tables, "prov": data.provenance, "jpeg_note": JPEG_NOTE if has_cifar else "",
           "n_ok": sum(r.get("status") == "ok" for r in data.results), "n": len(data.results),
           "run_dir": str(run_dir), "md_cell": _md_cell, "figures": _numbered(figs),
           "reading": READING + study_time(data.provenance)}
    env = _env()
    md = run_dir / "report.md"
    html = run_dir / "report.html"
    atomic_write_bytes(md, env.get_template("report.md.j2").render(**ctx).encode())
    atomic_write_bytes(html, env.get_template("report.html.j2").render(**ctx).encode())
    return md, html
