"""The report: a pure function of a run directory's files (results.csv, latency.csv, layers.csv,
provenance.json). `deepshrink report RUN_DIR` re-renders it without training anything.
"""

import base64
import json
from pathlib import Path
from typing import Any

import jinja2

from deepshrink.checkpoint import atomic_write_bytes
from deepshrink.errors import UserError
from deepshrink.report.plots import bits_figure, figure1, pareto_figures
from deepshrink.report.tables import RunData, Table, build_tables
from deepshrink.results import read_rows

JPEG_NOTE = ("Our CIFAR-10 copy is decoded from a JPEG quality-75 copy of the dataset, not the original "
             "pixels, so CIFAR-10 accuracies run a few points under results on the original images.")


def load_run(run_dir: Path) -> RunData:
    if not (run_dir / "results.csv").exists():
        raise UserError(f"{run_dir}: no results.csv in this run directory")
    return RunData(read_rows(run_dir / "results.csv"), read_rows(run_dir / "latency.csv"),
                   read_rows(run_dir / "layers.csv"))


def _provenance(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "provenance.json"
    try:
        return dict(json.loads(path.read_text())) if path.exists() else {}
    except (json.JSONDecodeError, OSError):
        return {}


def _env() -> jinja2.Environment:
    return jinja2.Environment(loader=jinja2.PackageLoader("deepshrink", "templates"),
                              autoescape=jinja2.select_autoescape(["html"]), keep_trailing_newline=True,
                              trim_blocks=True, lstrip_blocks=True,
                              undefined=jinja2.StrictUndefined)


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|")


def render_report(run_dir: Path) -> tuple[Path, Path]:
    """Write report.md, report.html (figures embedded as base64, no network) and figures/*.png."""
    data = load_run(run_dir)
    figdir = run_dir / "figures"
    figdir.mkdir(parents=True, exist_ok=True)
    figures = pareto_figures(data, figdir)
    extra = [figure1(data, figdir), bits_figure(data, figdir)]
    figs = [f for f in extra if f] + figures
    tables: list[Table] = build_tables(data)
    prov = _provenance(run_dir)
    has_cifar = any(r.get("dataset") == "cifar10" for r in data.results)
    ctx = {"tables": tables, "prov": prov, "jpeg_note": JPEG_NOTE if has_cifar else "",
           "n_ok": sum(r.get("status") == "ok" for r in data.results), "n": len(data.results),
           "run_dir": str(run_dir), "md_cell": _md_cell,
           "figures": [{"name": p.stem, "rel": f"figures/{p.name}",
                        "b64": base64.b64encode(p.read_bytes()).decode()} for p in figs]}
    env = _env()
    md = run_dir / "report.md"
    html = run_dir / "report.html"
    atomic_write_bytes(md, env.get_template("report.md.j2").render(**ctx).encode())
    atomic_write_bytes(html, env.get_template("report.html.j2").render(**ctx).encode())
    return md, html
