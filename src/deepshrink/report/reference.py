"""The reference study's published numbers (Lalwani & Muthaiyan, SysML 2019), transcribed from its
Tables 1-20, keyed by (table id, row label). Times are its "Config1" seconds per image (Intel Core
i7-8750H); sizes in kB; accuracies in percent. Only what the paper prints; nothing derived.
"""

from typing import Any

Ref = dict[str, Any]


def _rows(table: str, cols: tuple[str, ...], rows: dict[str, tuple[Any, ...]]) -> dict[tuple[str, str], Ref]:
    return {(table, label): dict(zip(cols, vals, strict=True)) for label, vals in rows.items()}


_SAT = ("size", "acc", "time")
REFERENCE: dict[tuple[str, str], Ref] = {
    **_rows("t1", ("size", "acc"), {"FLOAT64": (2090, 96.54), "FLOAT32": (1043, 96.49), "FLOAT16": (521, 96.43),
                                    "INT8": (266, 96.42)}),
    **_rows("t2", _SAT, {
        "MNIST LeNet-5 FP32": (244, 98.44, 3.00e-4), "MNIST LeNet-5 INT8": (67, 98.42, 2.33e-4),
        "CIFAR-10 LeNet-300-100 FP32": (3724, 43.57, 1.05e-3), "CIFAR-10 LeNet-300-100 INT8": (936, 43.85, 4.67e-4),
        "CIFAR-10 LeNet-5 FP32": (245, 61.30, 1.11e-3), "CIFAR-10 LeNet-5 INT8": (68, 61.09, 9.03e-4)}),
    **_rows("t3", _SAT, {"Original": (1043, 97.35, 2.79e-4), "50%": (493, 98.09, 1.42e-4), "60%": (390, 97.76, 1.17e-4),
                         "70%": (290, 97.74, 8.82e-5), "80%": (191, 97.62, 6.60e-5), "90%": (95, 87.56, 3.57e-5)}),
    **_rows("t4", ("fc1", "fc2", "fc3", "total"), {
        "Original": (235200, 30000, 1000, 266200), "50%": (117600, 7500, 500, 125600),
        "60%": (94080, 4800, 400, 99280), "70%": (70560, 2700, 300, 73560), "80%": (47040, 1200, 200, 48440),
        "90%": (23520, 300, 100, 23920)}),
    **_rows("t5", _SAT, {"Original": (245, 98.97, 3.00e-4), "Dense": (24, 95.75, 2.53e-4),
                         "Dense + Conv": (14, 94.25, 2.32e-4)}),
    **_rows("t6", ("conv1", "conv2", "fc1", "fc2", "fc3", "total"), {
        "Original": (156, 2416, 30840, 10164, 850, 44426), "Dense + Conv": (156, 604, 1028, 15, 40, 1843)}),
    **_rows("t7", _SAT, {"Original": (3724, 48.55, 1.05e-3), "50%": (1834, 46.41, 5.20e-4),
                         "70%": (1094, 46.19, 3.17e-4), "80%": (728, 44.41, 2.17e-4)}),
    **_rows("t8", ("fc1", "fc2", "fc3", "total"), {
        "Original": (921600, 30000, 1000, 952600), "50%": (460800, 7500, 500, 468800),
        "70%": (276489, 2700, 300, 279489), "80%": (184320, 1200, 200, 185720)}),
    **_rows("t9", _SAT, {"Original": (245, 53.73, 1.11e-3), "Dense": (117, 48.91, 1.11e-3),
                         "Dense + Conv": (64, 47.89, 1.02e-3)}),
    **_rows("t10", ("conv1", "conv2", "fc1", "fc2", "fc3", "total"), {
        "Original": (456, 2416, 48120, 10164, 850, 62006), "Dense + Conv": (456, 1208, 12462, 1512, 100, 15738)}),
    **_rows("t11", (*_SAT, "epochs"), {
        "Student from scratch, distillation settings": (156.15, 86.57, 5.35e-5, 300),
        "LeNet-300-100": (1043, 97.59, 2.79e-4, None),
        "LeNet-5": (244, 98.93, 3.00e-4, None), "LeNet-300-100 distilled": (156.15, 96.76, 5.35e-5, 50),
        "LeNet-5 distilled": (156.15, 97.24, 5.35e-5, 50)}),
    **_rows("t12", (*_SAT, "epochs"), {
        "Student from scratch, distillation settings": (604, 16.01, 1.65e-4, 4000),
        "LeNet-300-100": (3724, 50.35, 1.05e-3, None),
        "LeNet-5": (245, 62.40, 1.11e-3, None), "LeNet-300-100 distilled": (604, 42.18, 1.65e-4, 50),
        "LeNet-5 distilled": (604, 48.08, 1.65e-4, 50)}),
    **_rows("t13", _SAT, {
        "Original FP32": (1043, 97.35, 2.79e-4), "Original INT8": (266, 97.36, 1.34e-4),
        "50% FP32": (493, 98.09, 1.42e-4), "50% INT8": (127, 98.05, None), "60% FP32": (390, 97.76, 1.17e-4),
        "60% INT8": (101, 97.76, 7.71e-5), "70% FP32": (290, 97.74, 8.82e-5), "70% INT8": (75, 97.77, 5.75e-5),
        "80% FP32": (191, 97.62, 6.60e-5), "80% INT8": (50, 97.56, 4.56e-5), "90% FP32": (95, 87.56, 3.57e-5),
        "90% INT8": (26, 87.57, 3.22e-5)}),
    **_rows("t14", _SAT, {
        "Original FP32": (245, 98.97, 3.00e-4), "Original INT8": (69, 98.96, 2.33e-4),
        "Dense FP32": (24, 95.75, 2.53e-4), "Dense INT8": (10, 95.68, 2.26e-4),
        "Dense + Conv FP32": (14, 94.25, 2.32e-4), "Dense + Conv INT8": (7, 94.25, 2.15e-4)}),
    **_rows("t15", _SAT, {
        "Original FP32": (3724, 48.55, 1.05e-3), "Original INT8": (937, 48.54, 4.67e-4),
        "50% FP32": (1834, 46.41, 5.20e-4), "50% INT8": (462, 46.46, 2.67e-4), "70% FP32": (1094, 46.19, 3.17e-4),
        "70% INT8": (276, 46.13, 1.94e-4), "80% FP32": (728, 44.41, 2.17e-4), "80% INT8": (184, 44.03, 1.55e-4)}),
    **_rows("t16", _SAT, {
        "Original FP32": (245, 53.73, 1.11e-3), "Original INT8": (68, 53.82, 9.03e-4),
        "Dense FP32": (117, 48.91, 1.11e-3), "Dense INT8": (33, 48.67, 8.98e-4),
        "Dense + Conv FP32": (64, 47.89, 1.02e-3), "Dense + Conv INT8": (20, 48.00, 8.88e-4)}),
    **_rows("t17", _SAT, {
        "LeNet-300-100 FP32": (1043, 97.59, 2.79e-4), "LeNet-300-100 INT8": (266, 97.53, 1.31e-4),
        "LeNet-5 FP32": (244, 98.93, 3.00e-4), "LeNet-5 INT8": (67, 98.92, 2.33e-4),
        "LeNet-300-100 distilled FP32": (156.15, 96.76, 5.25e-5), "LeNet-300-100 distilled INT8": (42, 96.77, 3.66e-5),
        "LeNet-5 distilled FP32": (156.15, 97.31, 5.45e-5), "LeNet-5 distilled INT8": (42, 97.29, 3.78e-5)}),
    **_rows("t18", _SAT, {
        "LeNet-300-100 FP32": (3724, 50.35, 1.05e-3), "LeNet-300-100 INT8": (936, 50.29, 4.76e-4),
        "LeNet-5 FP32": (245, 62.40, 1.11e-3), "LeNet-5 INT8": (68, 62.23, 5.24e-4),
        "LeNet-300-100 distilled FP32": (604, 42.18, 1.65e-4), "LeNet-300-100 distilled INT8": (154, 42.07, 1.90e-4),
        "LeNet-5 distilled FP32": (604, 48.08, 1.64e-4), "LeNet-5 distilled INT8": (154, 48.01, 1.84e-4)}),
}

# Tables 19 and 20: (technique) -> {(dataset, model): (size kB, seconds per image)}.
_BEST_COLS = (("mnist", "lenet-300-100"), ("mnist", "lenet-5"), ("cifar10", "lenet-300-100"), ("cifar10", "lenet-5"))
_BEST = {
    "Original": ((1043, 1.31e-4), (244, 3.00e-4), (3724, 1.05e-3), (245, 1.11e-3)),
    "Quantization": ((266, 1.31e-4), (67, 2.33e-4), (936, 4.67e-4), (68, 9.03e-4)),
    "Pruning": ((191, 6.60e-5), (14, 2.32e-4), (728, 2.17e-4), (64, 1.02e-3)),
    "Knowledge Distillation": ((156.15, 5.35e-5), (156.15, 5.35e-5), (604, 1.65e-4), (604, 1.65e-4)),
    "Pruning + Quantization": ((50, 4.56e-5), (7, 2.15e-4), (184, 1.55e-4), (20, 8.88e-4)),
    "KD + Quantization": ((42, 3.66e-5), (42, 3.78e-5), (154, 1.90e-4), (154, 1.84e-4)),
}
BEST: dict[tuple[str, str, str], Ref] = {
    (tech, ds, model): {"size": v[0], "time": v[1]}
    for tech, vals in _BEST.items() for (ds, model), v in zip(_BEST_COLS, vals, strict=True)
}


def ref(table: str, row: str) -> Ref:
    return REFERENCE.get((table, row), {})
