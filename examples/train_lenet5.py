"""A LeNet-5 trained by a plain PyTorch script, as a user brings one to deepshrink (README "Already trained?"):
    DEEPSHRINK_DATA=../shared/data python examples/train_lenet5.py      # writes net.pt and net.onnx, prints test accuracy
    deepshrink compress --model examples/train_lenet5.py:LeNet5 --weights net.pt --dataset mnist \\
        --normalize mean=0.1307,std=0.3081 --step quantize:precision=int8,method=ptq
    deepshrink compress net.onnx --dataset mnist --normalize mean=0.1307,std=0.3081 \\
        --step prune.structured:ratio=0.5 --step quantize:precision=int8,method=ptq
"""
import gzip
import os
import sys

import numpy as np
import torch
from torch import nn


def LeNet5(num_classes: int = 10) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(1, 6, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 16, 5), nn.ReLU(),
                         nn.MaxPool2d(2), nn.Flatten(), nn.Linear(256, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(),
                         nn.Linear(84, num_classes))


def read(name: str, offset: int) -> np.ndarray:
    with gzip.open(os.path.join(os.environ["DEEPSHRINK_DATA"], "mnist", name)) as f:
        return np.frombuffer(f.read(), np.uint8, offset=offset)


def mnist(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.from_numpy(read(f"{split}-images-idx3-ubyte.gz", 16).reshape(-1, 1, 28, 28).copy()).float() / 255
    return (x - 0.1307) / 0.3081, torch.from_numpy(read(f"{split}-labels-idx1-ubyte.gz", 8).astype(np.int64))


if __name__ == "__main__":
    torch.manual_seed(0)
    (x, y), (xt, yt), net = mnist("train"), mnist("t10k"), LeNet5()
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    for _ in range(int(sys.argv[1]) if len(sys.argv) > 1 else 3):
        for idx in torch.randperm(len(x)).split(64):
            opt.zero_grad()
            nn.functional.cross_entropy(net(x[idx]), y[idx]).backward()
            opt.step()
    with torch.no_grad():
        print(f"test accuracy {100 * (net.eval()(xt).argmax(1) == yt).float().mean().item():.2f}%")
    torch.save(net.state_dict(), "net.pt")
    torch.onnx.export(net, (xt[:1],), "net.onnx", input_names=["image"], dynamic_axes={"image": {0: "batch"}},
                      dynamo=False)
