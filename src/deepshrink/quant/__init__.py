"""Below compress/, export/ and mcu/: the layer plan of a sequential model (`plan.py`: layers in order, ReLUs
fused, quantization points, range observation) and the quantization arithmetic (`scales.py`)."""
