"""The C templates of mcu/c/, rendered with Jinja2: kernels.c.j2's sections a model needs (a specialized
kernel once per Spec the model uses), model.h.j2 and model.c.j2 around them, and the harness files that call
a model by its prefix (host.c.j2, main.c.j2)."""

import re
import textwrap
from importlib import resources
from typing import Any

import jinja2

from deepshrink.mcu.program import Program

_SECTION = re.compile(r"^/\* @kernel (\w+)(?: needs=([\w,]+))? \*/$", re.M)


def _at(text: str, width: int, first: bool = True) -> str:
    """Filter `at`: a macro's lines indented by `width` (the first one too unless `first` is False, for a
    macro called mid-line), without its final newline (the template's own line ends it)."""
    body = textwrap.indent(text.rstrip("\n"), " " * width)
    return body if first else body[width:] if body.startswith(" " * width) else body


# C, not HTML: nothing is escaped; an undefined name in a template is an error, not an empty string.
ENV = jinja2.Environment(trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True,
                         undefined=jinja2.StrictUndefined, autoescape=False)
ENV.filters["at"] = _at


def source(name: str) -> str:
    return resources.files("deepshrink.mcu").joinpath(f"c/{name}").read_text()


def render(name: str, **context: Any) -> str:
    return ENV.from_string(source(name)).render(**context)


def kernel_sections() -> dict[str, tuple[list[str], str]]:
    """c/kernels.c.j2 split at its `@kernel` lines: name -> (needs, template text), in file order."""
    text = source("kernels.c.j2")
    marks = list(_SECTION.finditer(text))
    out: dict[str, tuple[list[str], str]] = {}
    for m, nxt in zip(marks, [*marks[1:], None], strict=True):
        code = text[m.end() : nxt.start() if nxt else len(text)].strip("\n")
        out[m.group(1)] = ((m.group(2) or "").split(",") if m.group(2) else [], code)
    return out


def _needed(names: set[str], sections: dict[str, tuple[list[str], str]]) -> list[str]:
    want = set()
    todo = list(names)
    while todo:
        n = todo.pop()
        if n not in want:
            want.add(n)
            todo.extend(sections[n][0])
    return [n for n in sections if n in want]


def kernels(prog: Program) -> str:
    """The kernels `prog` calls, as one C text: the sections it needs rendered together (a section's Jinja
    macros serve the ones after it), each specialized kernel once per Spec."""
    sections = kernel_sections()
    text = "\n".join(sections[n][1] + "\n" for n in _needed(prog.kernels, sections))
    specs: dict[str, list[dict[str, Any]]] = {n: [] for n in sections}
    for spec in sorted(prog.specs.values(), key=lambda s: s.name):
        specs[spec.section].append({"name": spec.name, **dict(spec.params)})
    return ENV.from_string(text).render(specs=specs, fixed=prog.graph.arith == "fixed")
