"""Which variant fills each row of the reference's tables: a row names (dataset, model, recipe
pipeline label); the `paper` and `quick` recipes use these labels.
"""

DS_NAME = {"mnist": "MNIST", "cifar10": "CIFAR-10"}
MODEL_NAME = {"lenet-300-100": "LeNet-300-100", "lenet-5": "LeNet-5"}

# ---- row specs: (row label, dataset, model, pipeline label) ----

Spec = tuple[str, str, str, str]


def _sweep(ds: str, model: str, sparsities: list[int], int8: bool = False) -> list[Spec]:
    rows: list[Spec] = [("Original FP32" if int8 else "Original", ds, model, "baseline")]
    rows += [("Original INT8", ds, model, "int8")] if int8 else []
    for s in sparsities:
        rows.append((f"{s}% FP32" if int8 else f"{s}%", ds, model, f"prune{s}"))
        rows += [(f"{s}% INT8", ds, model, f"prune{s}+int8")] if int8 else []
    return rows


def _structured(ds: str, int8: bool = False) -> list[Spec]:
    rows: list[Spec] = []
    for name, label in (("Original", "baseline"), ("Dense", "prune-dense"), ("Dense + Conv", "prune-dense-conv")):
        if not int8:
            rows.append((name, ds, "lenet-5", label))
            continue
        rows.append((f"{name} FP32", ds, "lenet-5", label))
        rows.append((f"{name} INT8", ds, "lenet-5", "int8" if label == "baseline" else f"{label}+int8"))
    return rows


def _kd(ds: str) -> list[Spec]:
    """Scratch at the distillation settings, scratch at its best effort, then per teacher: the teacher,
    distilled at the distillation settings and distilled at its best effort (the fair comparison)."""
    rows: list[Spec] = [("Student from scratch, distillation settings", ds, "lenet-5", "student"),
                        ("Student from scratch, best effort", ds, "lenet-5", "student-best")]
    for m in ("lenet-300-100", "lenet-5"):
        rows += [(MODEL_NAME[m], ds, m, "baseline"), (f"{MODEL_NAME[m]} distilled", ds, m, "distill"),
                 (f"{MODEL_NAME[m]} distilled, best effort", ds, m, "distill-best")]
    return rows


def _kdq(ds: str) -> list[Spec]:
    rows: list[Spec] = []
    for m in ("lenet-300-100", "lenet-5"):
        rows += [(f"{MODEL_NAME[m]} FP32", ds, m, "baseline"), (f"{MODEL_NAME[m]} INT8", ds, m, "int8")]
    for m in ("lenet-300-100", "lenet-5"):
        rows += [(f"{MODEL_NAME[m]} distilled FP32", ds, m, "distill"),
                 (f"{MODEL_NAME[m]} distilled INT8", ds, m, "distill+int8")]
    return rows


_T2: list[Spec] = [(f"{DS_NAME[d]} {MODEL_NAME[m]} {p.upper()}", d, m, "baseline" if p == "fp32" else "int8")
                   for d, m in (("mnist", "lenet-300-100"), ("mnist", "lenet-5"), ("cifar10", "lenet-300-100"),
                                ("cifar10", "lenet-5")) for p in ("fp32", "int8")]
_T1B: list[Spec] = [(f"{DS_NAME[d]} {MODEL_NAME[m]} {name}", d, m, lab)
                    for d, m in (("mnist", "lenet-300-100"), ("mnist", "lenet-5"), ("cifar10", "lenet-300-100"),
                                 ("cifar10", "lenet-5"))
                    for name, lab in (("FLOAT64", "fp64"), ("FLOAT32", "baseline"), ("FLOAT16", "fp16"),
                                      ("INT8 QAT", "int8"), ("INT8 PTQ", "int8-ptq"),
                                      ("INT8 never-slower", "int8-auto"), ("4-bit weights", "w4"),
                                      ("2-bit weights", "w2"))]
MAIN_TABLES: list[tuple[str, str, list[Spec], bool]] = [  # (id, title, rows, with epochs column)
    ("t1", "Table 1. Effect of precision on LeNet-300-100 on MNIST",
     [(n, "mnist", "lenet-300-100", lab) for n, lab in (("FLOAT64", "fp64"), ("FLOAT32", "baseline"),
                                                        ("FLOAT16", "fp16"), ("INT8", "int8"))], False),
    ("t1b", "Table 1b. Precision and weight bits for every baseline (beyond the reference)", _T1B, False),
    ("t2", "Table 2. Quantization (FP32 reference, INT8 compressed)", _T2, False),
    ("t3", "Table 3. Pruning LeNet-300-100 on MNIST", _sweep("mnist", "lenet-300-100", [50, 60, 70, 80, 90]), False),
    ("t5", "Table 5. Pruning LeNet-5 on MNIST", _structured("mnist"), False),
    ("t7", "Table 7. Pruning LeNet-300-100 on CIFAR-10", _sweep("cifar10", "lenet-300-100", [50, 70, 80]), False),
    ("t9", "Table 9. Pruning LeNet-5 on CIFAR-10", _structured("cifar10"), False),
    ("t11", "Table 11. Knowledge distillation on MNIST (student mlp-50)", _kd("mnist"), True),
    ("t12", "Table 12. Knowledge distillation on CIFAR-10 (student mlp-50)", _kd("cifar10"), True),
    ("t13", "Table 13. Pruning & quantization on LeNet-300-100 on MNIST",
     _sweep("mnist", "lenet-300-100", [50, 60, 70, 80, 90], int8=True), False),
    ("t14", "Table 14. Pruning & quantization on LeNet-5 on MNIST", _structured("mnist", int8=True), False),
    ("t15", "Table 15. Pruning & quantization on LeNet-300-100 on CIFAR-10",
     _sweep("cifar10", "lenet-300-100", [50, 70, 80], int8=True), False),
    ("t16", "Table 16. Pruning & quantization on LeNet-5 on CIFAR-10", _structured("cifar10", int8=True), False),
    ("t17", "Table 17. KD + quantization on MNIST", _kdq("mnist"), False),
    ("t18", "Table 18. KD + quantization on CIFAR-10", _kdq("cifar10"), False),
]
# (id, title, rows, layers, biases counted). The reference counts what it counts per table: Tables 4/8
# weights only (its fc1 235,200 = 784 x 300), Tables 6/10 weights and biases (its conv1 156 = 6 x 5 x 5
# weights + 6 biases); ours is counted the same way, so a cell compares like with like.
LAYER_TABLES: list[tuple[str, str, list[Spec], list[str], bool]] = [
    ("t4", "Table 4. Non-zero weights per layer, LeNet-300-100 on MNIST",
     _sweep("mnist", "lenet-300-100", [50, 60, 70, 80, 90]), ["fc1", "fc2", "fc3"], False),
    ("t6", "Table 6. Non-zero weights and biases per layer, LeNet-5 on MNIST",
     [("Original", "mnist", "lenet-5", "baseline"), ("Dense", "mnist", "lenet-5", "prune-dense"),
      ("Dense + Conv", "mnist", "lenet-5", "prune-dense-conv")], ["conv1", "conv2", "fc1", "fc2", "fc3"], True),
    ("t8", "Table 8. Non-zero weights per layer, LeNet-300-100 on CIFAR-10",
     _sweep("cifar10", "lenet-300-100", [50, 70, 80]), ["fc1", "fc2", "fc3"], False),
    ("t10", "Table 10. Non-zero weights and biases per layer, LeNet-5 on CIFAR-10",
     [("Original", "cifar10", "lenet-5", "baseline"), ("Dense", "cifar10", "lenet-5", "prune-dense"),
      ("Dense + Conv", "cifar10", "lenet-5", "prune-dense-conv")], ["conv1", "conv2", "fc1", "fc2", "fc3"], True),
]
FUTURE = [("Distill into a pruned student, then INT8", "fw-distill-pruned+int8"),
          ("Prune a distilled model, then INT8", "fw-prune-distilled+int8")]
# Tables 19/20: per technique, the variant the reference's cell is (read off its Tables 3-18: 191 kB
# is its 80 % LeNet-300-100, 14 kB its Dense + Conv LeNet-5, ...), per model: (recipe label, name).
BEST_CHOICE: dict[str, dict[str, tuple[str, str]]] = {
    "Original": {m: ("baseline", "baseline") for m in MODEL_NAME},
    "Quantization": {m: ("int8", "INT8 QAT") for m in MODEL_NAME},
    "Pruning": {"lenet-300-100": ("prune80", "80%"), "lenet-5": ("prune-dense-conv", "Dense + Conv")},
    "Knowledge Distillation": {m: ("distill", "student distilled from this model") for m in MODEL_NAME},
    "Pruning + Quantization": {"lenet-300-100": ("prune80+int8", "80% INT8"),
                               "lenet-5": ("prune-dense-conv+int8", "Dense + Conv INT8")},
    "KD + Quantization": {m: ("distill+int8", "distilled student, INT8") for m in MODEL_NAME},
}
