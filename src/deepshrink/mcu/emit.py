"""model.h + model.c from a lowered program, in CMSIS-NN's manner: the kernels it calls (rendered from
c/kernels.c.j2), each layer's constants under a comment giving its shapes and quantization, its parameters as
designated initializers, the arena plan as named offsets, and the entry points of SPEC §12 under the caller's
prefix (c/model.h.j2, c/model.c.j2). Everything but the entry points is static, so models with different
prefixes link into one image."""

import re
import textwrap
from dataclasses import dataclass
from itertools import groupby

import numpy as np

from deepshrink._version import __version__
from deepshrink.errors import UserError
from deepshrink.mcu.fixed import MULT_FIELDS
from deepshrink.mcu.graph import Graph
from deepshrink.mcu.names import check_prefix
from deepshrink.mcu.program import Buffer, Call, CArray, CStruct, Fields, Program, c_float
from deepshrink.mcu.templates import kernels, render

WIDTH = 116  # a struct initializer's lines, indented 4: 120 columns


@dataclass(frozen=True)
class Sources:
    header: str
    body: str


def _format(values: np.ndarray, ctype: str) -> str:
    flat = values.reshape(-1)
    if ctype == "float" or (ctype == "ds_mult_t" and values.dtype.kind == "f"):
        items = [f"{float(v).hex()}f" for v in flat.astype(np.float32)]
        per = 4
    elif ctype == "ds_mult_t":  # fixed-point rows: fixed.MULT_FIELDS
        items = ["{" + ", ".join(str(int(v)) for v in row[:-1]) + f", {int(row[-1])}LL}}"
                 for row in values.reshape(-1, len(MULT_FIELDS))]
        per = 3
    else:
        items = [str(int(v)) for v in flat]
        per = 20 if ctype in ("int8_t", "uint8_t") else 12
    lines = [", ".join(items[i : i + per]) for i in range(0, len(items), per)]
    return "    " + ",\n    ".join(lines)


def _array(a: CArray) -> str:
    align = " DS_ALIGN4" if a.ctype in ("int8_t", "uint8_t", "int16_t") else ""
    n = a.values.shape[0] if a.ctype == "ds_mult_t" and a.values.dtype.kind != "f" else a.values.size
    return f"static const {a.ctype} {a.name}[{max(n, 1)}]{align} = {{\n{_format(a.values, a.ctype)}\n}};"


def _value(v: str | int | Fields) -> str:
    return "{" + ", ".join(f".{k} = {_value(x)}" for k, x in v.items()) + "}" if isinstance(v, dict) else str(v)


def _struct(st: CStruct) -> str:
    """A const struct with a designated initializer, fields wrapped a few to a line."""
    lines: list[str] = []
    for item in (f".{k} = {_value(v)}," for k, v in st.fields.items()):
        if lines and len(lines[-1]) + 1 + len(item) <= WIDTH:
            lines[-1] += " " + item
        else:
            lines.append(item)
    return f"static const {st.ctype} {st.name} = {{\n" + "\n".join(f"    {s}" for s in lines) + "\n};"


def _const(c: CArray | CStruct) -> str:
    return _array(c) if isinstance(c, CArray) else _struct(c)


def _arena_buffers(prog: Program, arena_bytes: int) -> list[Buffer]:
    """The arena buffers the calls use, in the order they first appear; each must have been placed by the
    planner (an unplaced one would alias whatever sits at offset -1)."""
    used = dict.fromkeys(name for call in prog.calls for name, _ in call.args if name)
    out = [prog.buffers[n] for n in used if not prog.buffers[n].external]
    for b in out:
        if b.offset < 0 or b.offset + b.size > arena_bytes:
            raise RuntimeError(f"internal error: buffer {b.c} ({b.size} B) is not placed in the {arena_bytes}-byte "
                               f"arena (offset {b.offset})")
    return out


def _enum(b: Buffer) -> str:
    return f"{f'{b.c.upper()}_OFFSET = {b.offset},':<32} /* {b.what}, {b.size} B */"


def _pointer(b: Buffer) -> str:
    at = f"base + {b.c.upper()}_OFFSET"
    return f"{b.ctype} *const {b.c} = " + (f"{at};" if b.ctype == "int8_t" else f"({b.ctype} *)(void *)({at});")


def _call(prog: Program, call: Call) -> str:
    """The call, its note beside it, or above it where the line would run past WIDTH."""
    args = [*call.fns, *(_arg(prog, name, ctype) for name, ctype in call.args)]
    code = f"{call.kernel}(&{call.struct}, {', '.join(args)});"
    if not call.note:
        return code
    return f"{code}  /* {call.note} */" if len(code) + len(call.note) + 6 <= WIDTH else f"/* {call.note} */\n    {code}"


def _comment(text: str) -> str:
    """A block comment of `text` in 120 columns, never broken between a name and its number ("zp -128")."""
    lines = textwrap.wrap(re.sub(r"(\w) (-?\d)", "\\1\u00a0\\2", text), 114, break_on_hyphens=False)
    return "/* " + "\n * ".join(lines).replace("\u00a0", " ") + " */"


def _arg(prog: Program, name: str, ctype: str) -> str:
    if not name:
        return "0"
    buf = prog.buffers[name]
    if buf.external:
        return buf.external
    return buf.c if buf.ctype in ctype else f"({ctype})(void *){buf.c}"


def _check_names(prog: Program, prefix: str) -> None:
    exported = {f"{prefix}_{n}" for n in ("infer", "infer_arena", "infer_pixels")}
    if clash := exported & {c.name for c in prog.consts}:
        raise UserError(f"--prefix {prefix}: a layer's constant is named {sorted(clash)[0]}; choose another prefix")


def emit(prog: Program, arena_bytes: int, lut: np.ndarray, title: str, prefix: str = "ds") -> Sources:
    """model.h and model.c; every exported symbol and macro starts with `prefix` (NAME_infer, NAME_ARENA_BYTES)."""
    check_prefix(prefix)
    _check_names(prog, prefix)
    g = prog.graph
    stamp = f"/* Generated by deepshrink {__version__} from {title}. Do not edit: regenerate with `deepshrink mcu`. */"
    names = {"p": prefix, "P": prefix.upper(), "stamp": stamp}
    header = render("model.h.j2", **names, **_header_values(g, arena_bytes))
    buffers = _arena_buffers(prog, arena_bytes)
    layers = [{"comment": _comment(prog.descriptions[layer]) if layer in prog.descriptions else "",
               "consts": [_const(c) for c in consts]}
              for layer, consts in groupby(prog.consts, key=lambda c: c.layer)]
    body = render("model.c.j2", **names, kernels=kernels(prog), layers=layers,
                  buffers=[{"enum": _enum(b), "pointer": _pointer(b)} for b in buffers],
                  arena_words=max(-(-arena_bytes // 4), 1), calls=[_call(prog, c) for c in prog.calls],
                  lut=[_format(row, "int8_t").replace("\n", "\n    ").join(["    ", ""]) for row in lut],
                  plane=g.input.size // len(lut), hwc=g.input_layout == "hwc" and len(lut) > 1)
    return Sources(header, body)


def _header_values(g: Graph, arena_bytes: int) -> dict[str, object]:
    c, h, w = g.image_shape if len(g.image_shape) == 3 else (1, 1, g.image_shape[0])
    out = g.tensors[g.output]
    return {"channels": c, "height": h, "width": w, "input_size": g.input.size, "classes": out.size,
            "arena_bytes": arena_bytes, "input_scale": c_float(g.input.scale), "input_zp": g.input.zp,
            "output_scale": c_float(out.scale), "output_zp": out.zp,
            "input_order": "H x W x C" if g.input_layout == "hwc" and len(g.image_shape) == 3 else "C x H x W",
            "output_what": "the logits" if g.arith == "float" else "TFLite's output tensor, byte for byte"}
