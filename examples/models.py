"""Two modern small CNNs, written as a user would write their own model for deepshrink:

    deepshrink train --dataset cifar10 --model examples/models.py:resnet8
    deepshrink train --dataset cifar10 --model examples/models.py:dwnet --model-arg width=32

Each is a plain function taking `num_classes` and `input_shape` (deepshrink passes both) and returning
an nn.Module that is not an nn.Sequential: batch norm, residual additions, depthwise-separable
convolutions and global average pooling, the layers that every technique must handle.
"""

from torch import Tensor, nn


def _conv_bn(cin: int, cout: int, stride: int = 1, groups: int = 1, kernel: int = 3) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers and an identity (or 1x1 conv-BN) shortcut, added before the last ReLU."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = _conv_bn(cin, cout, stride)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.bn2(self.conv2(self.conv1(x))) + self.shortcut(x))


class ResNet8(nn.Module):
    """A ResNet-8 for 32x32 images (He et al. 2016's CIFAR layout, one block per stage): ~78k
    parameters at width 16, about 12 M multiply-adds per image."""

    def __init__(self, num_classes: int = 10, input_shape: tuple[int, int, int] = (3, 32, 32),
                 width: int = 16) -> None:
        super().__init__()
        w = width
        self.stem = _conv_bn(input_shape[0], w)
        self.layer1 = BasicBlock(w, w, 1)
        self.layer2 = BasicBlock(w, 2 * w, 2)
        self.layer3 = BasicBlock(2 * w, 4 * w, 2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4 * w, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return self.fc(self.pool(x).flatten(1))


class DWNet(nn.Module):
    """A MobileNet-style net: depthwise 3x3 + pointwise 1x1 blocks (Howard et al. 2017), global average
    pooling, dropout before the classifier: ~37k parameters at width 32."""

    def __init__(self, num_classes: int = 10, input_shape: tuple[int, int, int] = (3, 32, 32),
                 width: int = 32) -> None:
        super().__init__()
        w = width
        plan = [(w, 2 * w, 1), (2 * w, 2 * w, 2), (2 * w, 4 * w, 1), (4 * w, 4 * w, 2)]
        # A stride-2 stem: depthwise convolutions are memory-bound on CPUs, so they run at 16x16.
        layers: list[nn.Module] = [_conv_bn(input_shape[0], w, stride=2)]
        for cin, cout, stride in plan:
            layers += [_conv_bn(cin, cin, stride, groups=cin), _conv_bn(cin, cout, kernel=1)]
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.drop = nn.Dropout(0.1)
        self.fc = nn.Linear(4 * w, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.drop(self.pool(self.features(x)).flatten(1)))


def resnet8(num_classes: int = 10, input_shape: tuple[int, int, int] = (3, 32, 32), width: int = 16) -> nn.Module:
    return ResNet8(num_classes, input_shape, width)


def dwnet(num_classes: int = 10, input_shape: tuple[int, int, int] = (3, 32, 32), width: int = 32) -> nn.Module:
    return DWNet(num_classes, input_shape, width)
