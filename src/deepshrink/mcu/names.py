"""C names in the generated code: the API prefix (`--prefix`), and each layer's name (its graph node's name
made a C identifier, else its kind and ordinal: conv1, pool1, fc2), unique within model.c."""

import re

from deepshrink.errors import UserError

PREFIX = re.compile(r"[a-z_][a-z0-9_]*")
# A layer's name by the kind of its node when the graph names none (ONNX Runtime's quantizer and deepshrink's
# exporter leave node names empty).
LABELS = {"conv": "conv", "fc": "fc", "maxpool": "pool", "avgpool": "avgpool", "gavgpool": "gavgpool",
          "add": "add", "hwc": "hwc"}
_C_WORDS = {
    "auto", "break", "case", "char", "const", "continue", "default", "do", "double", "else", "enum", "extern",
    "float", "for", "goto", "if", "inline", "int", "long", "register", "restrict", "return", "short", "signed",
    "sizeof", "static", "struct", "switch", "typedef", "union", "unsigned", "void", "volatile", "while", "asm",
    "main",
}
# Identifiers model.c itself uses beside the layers' (entry-point parameters and locals, its own tables).
_OURS = {"input", "logits", "arena", "base", "pixels", "static_arena", "pixel_lut", "words", "q", "c", "i"}


def check_prefix(prefix: str) -> str:
    """The prefix of every exported symbol and macro (NAME_infer, NAME_ARENA_BYTES): a lowercase C identifier."""
    if not PREFIX.fullmatch(prefix):
        raise UserError(f"--prefix {prefix!r}: expected a C identifier of lowercase letters, digits and "
                        "underscores, not starting with a digit")
    return prefix


def c_identifier(raw: str) -> str:
    """A graph name as a lowercase C identifier ("/features/0/Conv" -> features_0_conv); "" when it has no
    letter or digit."""
    name = re.sub(r"[^0-9a-z]+", "_", raw.lower()).strip("_")
    return f"node_{name}" if name[:1].isdigit() or name.startswith("ds_") else name


class Namer:
    """Hands out file-scope names of model.c, each once: the kernels own `ds_*`, model.c its own words."""

    def __init__(self) -> None:
        self.taken = set(_C_WORDS | _OURS)
        self.ordinals: dict[str, int] = {}

    def unique(self, name: str) -> str:
        out, n = name, 1
        while out in self.taken:
            n += 1
            out = f"{name}_{n}"
        self.taken.add(out)
        return out

    def layer(self, kind: str, graph_name: str) -> str:
        """A layer's name: its graph node's, else kind and ordinal (the second convolution: conv2)."""
        if named := c_identifier(graph_name):
            return self.unique(named)
        label = LABELS.get(kind, kind)
        self.ordinals[label] = self.ordinals.get(label, 0) + 1
        return self.unique(f"{label}{self.ordinals[label]}")
