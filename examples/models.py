"""Modern small CNNs, written as a user would write their own model for deepshrink:

    deepshrink train --dataset cifar10 --model examples/models.py:resnet8
    deepshrink train --dataset cifar10 --model examples/models.py:dwnet --model-arg width=32
    deepshrink train --dataset cifar10 --model examples/models.py:mobilenet_v3_small

Each is a plain function taking `num_classes` and `input_shape` (deepshrink passes both) and returning
an nn.Module that is not an nn.Sequential: batch norm, residual additions, depthwise-separable
convolutions and global average pooling, the layers that every technique must handle.
"""

from typing import ClassVar

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


class SqueezeExcite(nn.Module):
    """Channel attention (Hu et al. 2018) as MobileNetV3 uses it: pooled, squeezed 4x, hard-sigmoid gate."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        squeezed = max(8, channels // 4)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeezed, 1)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(squeezed, channels, 1)
        self.gate = nn.Hardsigmoid()

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gate(self.fc2(self.relu(self.fc1(self.pool(x)))))


class InvertedResidual(nn.Module):
    """MobileNetV3's block: 1x1 expansion, depthwise k x k, optional squeeze-excite, 1x1 projection (linear),
    and a residual addition when the shape is kept."""

    def __init__(self, cin: int, expand: int, cout: int, kernel: int, se: bool, hswish: bool, stride: int) -> None:
        super().__init__()
        act: type[nn.Module] = nn.Hardswish if hswish else nn.ReLU
        layers: list[nn.Module] = []
        if expand != cin:
            layers += [nn.Conv2d(cin, expand, 1, bias=False), nn.BatchNorm2d(expand), act()]
        layers += [nn.Conv2d(expand, expand, kernel, stride, kernel // 2, groups=expand, bias=False),
                   nn.BatchNorm2d(expand), act()]
        if se:
            layers.append(SqueezeExcite(expand))
        layers += [nn.Conv2d(expand, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: Tensor) -> Tensor:
        y = self.block(x)
        return x + y if self.residual else y


class MobileNetV3Small(nn.Module):
    """A MobileNetV3-Small-style net (Howard et al. 2019) for small images: hard-swish stem, inverted
    residual blocks with squeeze-excite, a 1x1 head conv, global average pooling and a two-layer classifier.
    Five blocks instead of eleven (~68k parameters at width 1.0, ~0.5 M multiply-adds at 32x32), so it
    trains in minutes on two CPU cores; torchvision's own builder needs a torchvision matching torch."""

    # (kernel, expansion, out, squeeze-excite, hard-swish, stride)
    BLOCKS: ClassVar[list[tuple[int, int, int, bool, bool, int]]] = [
        (3, 16, 16, True, False, 2), (3, 48, 24, False, False, 2), (3, 72, 24, False, False, 1),
        (5, 96, 40, True, True, 2), (5, 120, 40, True, True, 1)]

    def __init__(self, num_classes: int = 10, input_shape: tuple[int, int, int] = (3, 32, 32),
                 width: float = 1.0) -> None:
        super().__init__()

        def c(n: int) -> int:
            return max(8, round(n * width / 8) * 8)

        layers: list[nn.Module] = [nn.Conv2d(input_shape[0], c(16), 3, 2, 1, bias=False), nn.BatchNorm2d(c(16)),
                                   nn.Hardswish()]
        cin = c(16)
        for kernel, expand, out, se, hswish, stride in self.BLOCKS:
            layers.append(InvertedResidual(cin, c(expand), c(out), kernel, se, hswish, stride))
            cin = c(out)
        layers += [nn.Conv2d(cin, c(144), 1, bias=False), nn.BatchNorm2d(c(144)), nn.Hardswish()]
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Linear(c(144), c(128)), nn.Hardswish(), nn.Dropout(0.2),
                                        nn.Linear(c(128), num_classes))

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.pool(self.features(x)).flatten(1))


def mobilenet_v3_small(num_classes: int = 10, input_shape: tuple[int, int, int] = (3, 32, 32),
                       width: float = 1.0) -> nn.Module:
    return MobileNetV3Small(num_classes, input_shape, width)
