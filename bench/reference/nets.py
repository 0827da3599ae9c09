"""PyTorch versions of our two architectures, loading the same weights as the Rust side.

Both modules take what our engines take: a uint8 NHWC image batch. The NCHW view of an NHWC
tensor (``permute(0, 3, 1, 2)``) already has the channels_last memory layout, so with the
module converted to ``torch.channels_last`` no layout copy is made anywhere.
"""

import math

import torch
import torch.nn.functional as F
from safetensors.numpy import load_file
from torch import nn


class SeedCnn(nn.Module):
    """3 x [conv3x3 pad 1 -> ReLU -> maxpool 2], global average pool, dropout, linear.

    BatchNorm is already folded into the convolutions of ``model.safetensors``.
    ``forward`` returns the logit of "dog", shape [N].
    """

    def __init__(self, channels=(32, 64, 128)):
        super().__init__()
        widths = (3, *channels)
        self.convs = nn.ModuleList(nn.Conv2d(i, o, 3, padding=1) for i, o in zip(widths, widths[1:]))
        self.dropout = nn.Dropout(0.5)
        self.fc = nn.Linear(channels[-1], 1)

    def forward(self, images_u8_nhwc):
        x = images_u8_nhwc.permute(0, 3, 1, 2).float() / 255.0
        for conv in self.convs:
            x = F.max_pool2d(F.relu(conv(x)), 2)
        x = self.dropout(x.mean((2, 3)))
        return self.fc(x).squeeze(1)

    def load_ours(self, safetensors_path):
        """Loads our ``model.safetensors`` (keys conv1..3 / fc, PyTorch layouts already)."""
        w = load_file(safetensors_path)
        state = {}
        for i in range(len(self.convs)):
            state[f"convs.{i}.weight"] = w[f"conv{i + 1}.weight"]
            state[f"convs.{i}.bias"] = w[f"conv{i + 1}.bias"]
        state["fc.weight"], state["fc.bias"] = w["fc.weight"], w["fc.bias"]
        self.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
        return self


class SameConvBn(nn.Module):
    """Bias-free convolution with TensorFlow "same" padding, then BatchNorm (eps 1e-3).

    The checkpoint was converted from TensorFlow, whose "same" padding puts the extra row and
    column of a stride-2 convolution at the bottom/right; PyTorch's symmetric padding would
    shift every feature map by one pixel.
    """

    def __init__(self, cin, cout, kernel, stride=1, groups=1):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=1e-3)

    def forward(self, x):
        k, s = self.conv.kernel_size[0], self.conv.stride[0]
        pads = []
        for size in (x.shape[3], x.shape[2]):  # F.pad order: width first, then height
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]
        if any(pads):
            x = F.pad(x, pads)
        return self.bn(self.conv(x))

    def load(self, sd, conv, bn):
        """Copies conv ``conv`` and BatchNorm ``bn`` of a state dict (call under no_grad)."""
        self.conv.weight.copy_(sd[f"{conv}.weight"])
        for name in ("weight", "bias", "running_mean", "running_var"):
            getattr(self.bn, name).copy_(sd[f"{bn}.{name}"])


class MbConv(nn.Module):
    """Inverted residual block without squeeze-excitation (the "Lite" variant), ReLU6."""

    def __init__(self, expand, kernel, stride, cin, cout):
        super().__init__()
        mid = cin * expand
        self.expand = SameConvBn(cin, mid, 1) if expand != 1 else None
        self.depthwise = SameConvBn(mid, mid, kernel, stride, groups=mid)
        self.project = SameConvBn(mid, cout, 1)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        y = F.relu6(self.expand(x)) if self.expand is not None else x
        y = self.project(F.relu6(self.depthwise(y)))
        return y + x if self.residual else y


# EfficientNet-B0's block table: (expand, kernel, stride, in, out, repeats).
EFFNET_LITE0_STAGES = [
    (1, 3, 1, 32, 16, 1),
    (6, 3, 2, 16, 24, 2),
    (6, 5, 2, 24, 40, 2),
    (6, 3, 2, 40, 80, 3),
    (6, 5, 1, 80, 112, 3),
    (6, 5, 2, 112, 192, 4),
    (6, 3, 1, 192, 320, 1),
]


class EfficientNetLite0CatDog(nn.Module):
    """EfficientNet-Lite0 backbone + our cat/dog head; ``forward`` returns the dog logit [N].

    Only the branch that produces ``p_dog`` is built: without a tuned head it is
    head conv -> ReLU6 -> pool -> ``catdog``; with one (``tuned_head.*`` in head.safetensors,
    BatchNorm folded, so it has a bias) the trunk goes through the tuned 1x1 convolution
    instead, and the pretrained head conv only served the ImageNet branch, not built here.
    BatchNorm layers stay separate modules, as in the usual eager PyTorch model.
    """

    def __init__(self, tuned_head):
        super().__init__()
        self.stem = SameConvBn(3, 32, 3, 2)
        blocks = []
        for expand, kernel, stride, cin, cout, repeats in EFFNET_LITE0_STAGES:
            for r in range(repeats):
                blocks.append(MbConv(expand, kernel, stride if r == 0 else 1, cin if r == 0 else cout, cout))
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Conv2d(320, 1280, 1, bias=True) if tuned_head else SameConvBn(320, 1280, 1)
        self.catdog = nn.Linear(1280, 1)

    def forward(self, images_u8_nhwc):
        x = images_u8_nhwc.permute(0, 3, 1, 2).float() / 127.5 - 1.0
        x = self.blocks(F.relu6(self.stem(x)))
        x = F.relu6(self.head(x)).mean((2, 3))
        return self.catdog(x).squeeze(1)

    @classmethod
    def load_ours(cls, pth_path, head_path):
        """Backbone from the lukemelas-named checkpoint, head from our head.safetensors."""
        sd = torch.load(pth_path, map_location="cpu", weights_only=True)
        head = {k: torch.from_numpy(v) for k, v in load_file(head_path).items()}
        tuned = "tuned_head.weight" in head
        model = cls(tuned).eval()
        with torch.no_grad():
            model.stem.load(sd, "_conv_stem", "_bn0")
            for i, block in enumerate(model.blocks):
                p = f"_blocks.{i}"
                if block.expand is not None:
                    block.expand.load(sd, f"{p}._expand_conv", f"{p}._bn0")
                block.depthwise.load(sd, f"{p}._depthwise_conv", f"{p}._bn1")
                block.project.load(sd, f"{p}._project_conv", f"{p}._bn2")
            if tuned:
                model.head.weight.copy_(head["tuned_head.weight"][:, :, None, None])
                model.head.bias.copy_(head["tuned_head.bias"])
            else:
                model.head.load(sd, "_conv_head", "_bn1")
            model.catdog.weight.copy_(head["catdog.weight"])
            model.catdog.bias.copy_(head["catdog.bias"])
        return model
