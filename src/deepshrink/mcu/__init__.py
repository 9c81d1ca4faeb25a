"""The microcontroller target (SPEC §12): an INT8 artifact as C99 (model.h + model.c: integer kernels, an
arena the caller may own, weights in flash), built for the host and for a Cortex-M core, run in an emulator,
measured.

Layers, each usable alone: graph.py (the integer graph ONNX Runtime runs) -> lower.py (fusions, the walk;
lower_weighted.py and lower_simple.py lower each operator into program.py's calls; layouts.py picks each
layer's weight layout; names.py names it in C) -> arena.py (liveness plan) -> emit.py (the C, rendered from
the templates in c/ by templates.py); then toolchain.py (host and target builds), emulate.py (Unicorn:
outputs, instructions, cycles, stack), and run.py (`deepshrink mcu`: all of it, measured against ONNX Runtime).
"""

from deepshrink.mcu.run import McuOptions, build_mcu

__all__ = ["McuOptions", "build_mcu"]
