"""The distillation objective (Hinton et al. 2015) for the shared training loop:
    loss = alpha * T^2 * KL(softmax(z_t/T) || softmax(z_s/T)) + (1 - alpha) * CE(z_s, y).
"""

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from deepshrink.train import Objective


def hinton_loss(student: Tensor, teacher: Tensor, labels: Tensor, temperature: float,
                alpha: float) -> dict[str, Tensor]:
    """alpha*T^2*KL(p_t||p_s) + (1-alpha)*CE; T^2 keeps the soft gradients' scale independent of T."""
    task = F.cross_entropy(student, labels)
    log_ps = F.log_softmax(student / temperature, dim=1)
    log_pt = F.log_softmax(teacher.detach() / temperature, dim=1)
    kd = F.kl_div(log_ps, log_pt, reduction="batchmean", log_target=True) * temperature**2
    return {"loss": alpha * kd + (1.0 - alpha) * task, "task_loss": task.detach(), "kd_loss": kd.detach()}


def distill_objective(teacher: Tensor | Callable[[Tensor], Tensor], temperature: float,
                      alpha: float) -> Objective:
    """Teacher = cached logits of the whole training set (indexed by the batch's `idx`) or a module
    run on the batch itself."""

    def objective(model: nn.Module, x: Tensor, y: Tensor, idx: Tensor) -> dict[str, Tensor]:
        s = model(x)
        t = teacher[idx].to(s.device) if isinstance(teacher, Tensor) else teacher(x)
        return hinton_loss(s, t, y, temperature, alpha)

    return objective


def frozen_teacher(teacher: nn.Module) -> Callable[[Tensor], Tensor]:
    """The teacher run on each batch without gradients (a model as it was before a step changed it)."""
    def run(x: Tensor) -> Tensor:
        with torch.no_grad():
            return teacher(x)

    return run
