"""Independent PyTorch references for the CNN segmenters of conf/models/ (issue 15).

tools/torch_ref.py builds most fixtures from the network file itself (GraphNet, an
interpreter of the cfg); a fixture that names a builder of BUILDERS below is built here
instead, from torchvision's own modules and from heads written after mmsegmentation's decode
heads, without reading the network file's layers (only `classes`). Both sides then get the
same closed-form parameter values by name, so a layer the network file wires differently
(another stride, dilation, padding, order of a concat, a missing ReLU) fails the C test.

- Encoders: torchvision.models.resnet50 (with replace_stride_with_dilation for output
  stride 8) and resnet18; for a dilated ResNet-18 (torchvision's BasicBlock refuses
  dilation) torchvision's ResNet class with mmsegmentation's BasicBlock (dilation on conv1
  only). Modules are registered at the top level (conv1, bn1, layer1, ...), as the network
  files name them; avgpool and fc are dropped.
- deeplabv3_r50: torchvision.models.segmentation.deeplabv3_resnet50(aux_loss=True) itself
  (backbone children adopted at the top level: its state dict without "backbone.");
  deeplabv3_r18: torchvision's ASPP (128 channels) and FCNHead in DeepLabHead's order.
- pspnet, upernet: mmsegmentation's PSPHead / UPerHead / FCNHead (ConvModule = conv, bn,
  activate), written here after mmseg/models/decode_heads/{psp,uper,fcn}_head.py; names
  are mmsegmentation's module paths (decode_head.psp_modules.0.1.conv.weight, ...).
- fpn_r50: fpn_r18's head (conf/models/fpn_r18.cfg) on ResNet-50, with the FCN aux head.

Dropout modules are replaced by Identity (camotrain has no dropout; the indices of the
others stay torchvision's). ReLUs are made out-of-place so that torch_ref.py's kink hook
sees their inputs. Every model has `in_ch`, `outputs` [(name, layer)] and returns a list
of outputs, each resized to the input (bilinear, align_corners=False).
"""
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from torchvision.models import resnet as tv_resnet
from torchvision.models.segmentation import deeplabv3 as tv_deeplab
from torchvision.models.segmentation import fcn as tv_fcn


class MMSegBasicBlock(nn.Module):
    """mmsegmentation's BasicBlock (mmseg/models/backbones/resnet.py): conv1 3x3 with the
    stride, padding = dilation = `dilation`; conv2 3x3, padding 1, no dilation. Takes
    torchvision's block arguments so that torchvision's ResNet._make_layer builds it."""
    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None, groups=1, base_width=64,
                 dilation=1, norm_layer=None):
        super().__init__()
        assert groups == 1 and base_width == 64
        norm_layer = norm_layer or nn.BatchNorm2d
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, padding=dilation,
                               dilation=dilation, bias=False)
        self.bn1 = norm_layer(planes)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = norm_layer(planes)
        self.downsample = downsample

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        idt = x if self.downsample is None else self.downsample(x)
        return self.relu(out + idt)


DILATE = {32: [False, False, False], 16: [False, False, True], 8: [False, True, True]}


def resnet(depth, output_stride):
    """torchvision's ResNet-18/50 at output stride 32, 16 or 8."""
    rswd = DILATE[output_stride]
    if depth == 50:
        return torchvision.models.resnet50(weights=None, replace_stride_with_dilation=rswd)
    assert depth == 18
    if not any(rswd):
        return torchvision.models.resnet18(weights=None)
    return tv_resnet.ResNet(MMSegBasicBlock, [2, 2, 2, 2], replace_stride_with_dilation=rswd)


STAGE_CHANNELS = {18: [64, 128, 256, 512], 50: [256, 512, 1024, 2048]}
ENCODER_PARTS = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")


def finish(model):
    """Dropout -> Identity (same indices), ReLUs out of place."""
    for mod in list(model.modules()):
        for name, child in list(mod.named_children()):
            if isinstance(child, (nn.Dropout, nn.Dropout2d)):
                setattr(mod, name, nn.Identity())
            elif isinstance(child, nn.ReLU):
                child.inplace = False
    return model


class SegNet(nn.Module):
    """An encoder adopted at the top level, heads added by subclasses; outputs main, aux."""

    def __init__(self, encoder, classes):
        super().__init__()
        for part in ENCODER_PARTS:
            self.add_module(part, getattr(encoder, part))
        self.in_ch = 3
        self.classes = classes
        self.outputs = [("main", "out"), ("aux", "aux")]

    def encode(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        c1 = self.layer1(x)
        c2 = self.layer2(c1)
        c3 = self.layer3(c2)
        return [c1, c2, c3, self.layer4(c3)]

    @staticmethod
    def up(y, x):
        return F.interpolate(y, size=x.shape[2:], mode="bilinear", align_corners=False)


# ---------------------------------------------------------------- DeepLabV3 (torchvision)

class DeepLabV3(SegNet):
    """torchvision's DeepLabV3.forward on the adopted backbone: classifier on layer4,
    aux_classifier on layer3, both resized to the input."""

    def __init__(self, encoder, classifier, aux_classifier, classes):
        super().__init__(encoder, classes)
        self.classifier = classifier
        self.aux_classifier = aux_classifier

    def forward(self, x):
        c = self.encode(x)
        return [self.up(self.classifier(c[3]), x), self.up(self.aux_classifier(c[2]), x)]


def deeplabv3_r50(classes):
    tv = torchvision.models.segmentation.deeplabv3_resnet50(
        weights=None, weights_backbone=None, num_classes=classes, aux_loss=True)
    return finish(DeepLabV3(tv.backbone, tv.classifier, tv.aux_classifier, classes))


def deeplabv3_r18(classes, ch=128):
    """DeepLabHead's layers (torchvision's DeepLabHead is fixed at 256 channels) with
    torchvision's ASPP at `ch` channels; torchvision's FCNHead(256) as the aux head."""
    head = nn.Sequential(tv_deeplab.ASPP(512, [12, 24, 36], ch),
                         nn.Conv2d(ch, ch, 3, padding=1, bias=False), nn.BatchNorm2d(ch),
                         nn.ReLU(), nn.Conv2d(ch, classes, 1))
    return finish(DeepLabV3(resnet(18, 8), head, tv_fcn.FCNHead(256, classes), classes))


# ---------------------------------------------------------------- mmsegmentation heads

def torch_cat(xs):
    return torch.cat(xs, dim=1)


class ConvModule(nn.Module):
    """mmcv's ConvModule with BN and ReLU: conv (no bias: a norm follows), bn, activate."""

    def __init__(self, cin, cout, k):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, padding=k // 2, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.activate = nn.ReLU()

    def forward(self, x):
        return self.activate(self.bn(self.conv(x)))


class PPM(nn.ModuleList):
    """mmsegmentation's PPM: per scale AdaptiveAvgPool2d + 1x1 ConvModule, resized back."""

    def __init__(self, scales, cin, ch):
        super().__init__([nn.Sequential(nn.AdaptiveAvgPool2d(s), ConvModule(cin, ch, 1))
                          for s in scales])

    def forward(self, x):
        return [F.interpolate(m(x), size=x.shape[2:], mode="bilinear", align_corners=False)
                for m in self]


class PSPHead(nn.Module):
    """mmsegmentation's PSPHead: cat(x, PPM(x)) -> 3x3 bottleneck -> conv_seg."""

    def __init__(self, cin, ch, classes, scales=(1, 2, 3, 6)):
        super().__init__()
        self.psp_modules = PPM(scales, cin, ch)
        self.bottleneck = ConvModule(cin + len(scales) * ch, ch, 3)
        self.conv_seg = nn.Conv2d(ch, classes, 1)

    def forward(self, x):
        return self.conv_seg(self.bottleneck(torch_cat([x] + self.psp_modules(x))))


class UPerHead(nn.Module):
    """mmsegmentation's UPerHead: PSP on the last level, lateral 1x1 ConvModules on the
    others, top-down sums, 3x3 fpn ConvModules, all resized to level 0, cat, fused."""

    def __init__(self, in_channels, ch, classes, scales=(1, 2, 3, 6)):
        super().__init__()
        self.psp_modules = PPM(scales, in_channels[-1], ch)
        self.bottleneck = ConvModule(in_channels[-1] + len(scales) * ch, ch, 3)
        self.lateral_convs = nn.ModuleList([ConvModule(c, ch, 1) for c in in_channels[:-1]])
        self.fpn_convs = nn.ModuleList([ConvModule(ch, ch, 3) for _ in in_channels[:-1]])
        self.fpn_bottleneck = ConvModule(len(in_channels) * ch, ch, 3)
        self.conv_seg = nn.Conv2d(ch, classes, 1)

    def forward(self, inputs):
        laterals = [conv(inputs[i]) for i, conv in enumerate(self.lateral_convs)]
        x = inputs[-1]
        laterals.append(self.bottleneck(torch_cat([x] + self.psp_modules(x))))
        n = len(laterals)
        for i in range(n - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + F.interpolate(
                laterals[i], size=laterals[i - 1].shape[2:], mode="bilinear",
                align_corners=False)
        outs = [self.fpn_convs[i](laterals[i]) for i in range(n - 1)] + [laterals[-1]]
        for i in range(n - 1, 0, -1):
            outs[i] = F.interpolate(outs[i], size=outs[0].shape[2:], mode="bilinear",
                                    align_corners=False)
        return self.conv_seg(self.fpn_bottleneck(torch_cat(outs)))


class FCNHead(nn.Module):
    """mmsegmentation's FCNHead with num_convs=1, concat_input=False: convs.0, conv_seg."""

    def __init__(self, cin, ch, classes):
        super().__init__()
        self.convs = nn.Sequential(ConvModule(cin, ch, 3))
        self.conv_seg = nn.Conv2d(ch, classes, 1)

    def forward(self, x):
        return self.conv_seg(self.convs(x))


class MMSegNet(SegNet):
    """decode_head on the last level (PSP) or all four (UPer); auxiliary_head on layer3."""

    def __init__(self, encoder, decode_head, auxiliary_head, classes, all_levels):
        super().__init__(encoder, classes)
        self.decode_head = decode_head
        self.auxiliary_head = auxiliary_head
        self.all_levels = all_levels

    def forward(self, x):
        c = self.encode(x)
        main = self.decode_head(c if self.all_levels else c[3])
        return [self.up(main, x), self.up(self.auxiliary_head(c[2]), x)]


def pspnet(depth, ch, aux_ch):
    def build(classes):
        cin = STAGE_CHANNELS[depth]
        return finish(MMSegNet(resnet(depth, 8), PSPHead(cin[3], ch, classes),
                               FCNHead(cin[2], aux_ch, classes), classes, False))
    return build


def upernet(depth, ch, aux_ch):
    def build(classes):
        cin = STAGE_CHANNELS[depth]
        return finish(MMSegNet(resnet(depth, 32), UPerHead(cin, ch, classes),
                               FCNHead(cin[2], aux_ch, classes), classes, True))
    return build


# ---------------------------------------------------------------- FPN (fpn_r18's head)

class ConvBNAct(nn.Module):
    """camotrain's conv with bn and act: children conv, bn, act."""

    def __init__(self, cin, cout):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.act = nn.ReLU()

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


class FPN(SegNet):
    """conf/models/fpn_r18.cfg's head: lateral 1x1 convs (bias), top-down sums, a 3x3
    conv-bn-relu per level, all summed at 1/4, head_conv, head; mmsegmentation's FCNHead on
    layer3 as the auxiliary output."""

    def __init__(self, depth, lat, seg, aux_ch, classes):
        super().__init__(resnet(depth, 32), classes)
        cin = STAGE_CHANNELS[depth]
        for lv, c in zip((2, 3, 4, 5), cin):
            self.add_module("lat%d" % lv, nn.Conv2d(c, lat, 1))
        for lv in (5, 4, 3, 2):
            self.add_module("seg%d" % lv, ConvBNAct(lat, seg))
        self.head_conv = ConvBNAct(seg, seg)
        self.head = nn.Conv2d(seg, classes, 1)
        self.auxiliary_head = FCNHead(cin[2], aux_ch, classes)

    def forward(self, x):
        c = self.encode(x)
        l2, l3, l4, l5 = self.lat2(c[0]), self.lat3(c[1]), self.lat4(c[2]), self.lat5(c[3])
        p4 = l4 + self.up(l5, l4)
        p3 = l3 + self.up(p4, l3)
        p2 = l2 + self.up(p3, l2)
        fuse = (self.seg2(p2) + self.up(self.seg3(p3), p2) + self.up(self.seg4(p4), p2)
                + self.up(self.seg5(l5), p2))
        main = self.head(self.head_conv(fuse))
        return [self.up(main, x), self.up(self.auxiliary_head(c[2]), x)]


# builder name -> f(classes) -> model (tools/torch_ref.py FIXTURES' optional 7th field)
BUILDERS = {
    "deeplabv3_r50": deeplabv3_r50,
    "deeplabv3_r18": deeplabv3_r18,
    "pspnet_r50": pspnet(50, 512, 256),
    "pspnet_r18": pspnet(18, 128, 64),
    "upernet_r50": upernet(50, 512, 256),
    "upernet_r18": upernet(18, 128, 64),
    "fpn_r50": lambda classes: finish(FPN(50, 256, 128, 256, classes)),
}


# ---------------------------------------------------------------- SegFormer (transformers)

# MiT variants as transformers' conversion script (convert_segformer_original_to_pytorch.py)
# sets them for nvidia/mit-bN and the segformer-bN checkpoints: hidden sizes, depths,
# decoder_hidden_size; the rest is SegformerConfig's defaults for every variant.
SEGFORMER_SIZES = {
    "b0": ([32, 64, 160, 256], [2, 2, 2, 2], 256),
    "b1": ([64, 128, 320, 512], [2, 2, 2, 2], 256),
    "b2": ([64, 128, 320, 512], [3, 4, 6, 3], 768),
}


def hf_segformer_config(classes, drop_path_rate, variant="b0"):
    """transformers' SegformerConfig for nvidia/mit-<variant> (SEGFORMER_SIZES; its defaults:
    heads 1/2/5/8, sr 8/4/2/1, patches 7/3/3/3 strides 4/2/2/2, MLP ratio 4), dropouts 0
    (camotrain has none)."""
    from transformers import SegformerConfig
    hidden, depths, decoder = SEGFORMER_SIZES[variant]
    return SegformerConfig(num_labels=classes, hidden_sizes=hidden,
                           depths=depths, num_attention_heads=[1, 2, 5, 8],
                           sr_ratios=[8, 4, 2, 1], patch_sizes=[7, 3, 3, 3],
                           strides=[4, 2, 2, 2], mlp_ratios=[4, 4, 4, 4],
                           decoder_hidden_size=decoder, hidden_act="gelu",
                           drop_path_rate=drop_path_rate, hidden_dropout_prob=0.0,
                           attention_probs_dropout_prob=0.0, classifier_dropout_prob=0.0)


def segformer_drop_path_rates(drop_path_rate=0.1, variant="b0"):
    """{block module path: drop probability} of transformers' model (its linear schedule)."""
    from transformers import SegformerForSemanticSegmentation
    hf = SegformerForSemanticSegmentation(hf_segformer_config(1, drop_path_rate, variant))
    return {"segformer." + n[:-len(".drop_path")]: float(getattr(m, "drop_prob", 0.0))
            for n, m in hf.segformer.named_modules() if n.endswith(".drop_path")}


class Segformer(nn.Module):
    """transformers' SegformerForSemanticSegmentation itself (mit-<variant> sizes, random
    init, drop_path_rate
    0: the fixture's network file has every drop_path p = 0): its `segformer` and
    `decode_head` registered at the root, so the state dict names are transformers' own;
    the forward is transformers' (model(pixel_values).logits at 1/4 scale), then the
    logits resized to the input, bilinear, align_corners=False, as its loss does."""

    def __init__(self, classes, variant="b0"):
        super().__init__()
        from transformers import SegformerForSemanticSegmentation
        hf = SegformerForSemanticSegmentation(hf_segformer_config(classes, 0.0, variant))
        self.segformer = hf.segformer
        self.decode_head = hf.decode_head
        self._hf = [hf]  # not a submodule: the two above are its only children with state
        self.in_ch = 3
        self.classes = classes
        self.outputs = [("main", "out")]

    def forward(self, x):
        logits = self._hf[0](pixel_values=x, return_dict=True).logits
        return [F.interpolate(logits, size=x.shape[2:], mode="bilinear", align_corners=False)]


for _v in SEGFORMER_SIZES:
    BUILDERS["segformer_" + _v] = lambda classes, v=_v: finish(Segformer(classes, v))
