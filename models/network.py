"""The emotion network: raw 16 kHz waveform in, class logits out."""

from __future__ import annotations

import torch
from torch import nn

from models.backbones import Backbone
from models.head import EmotionHead


class EmotionNet(nn.Module):
    """Backbone + pooling head. The front end lives inside the backbone, so an exported
    model takes the raw waveform and needs no feature code at serving time."""

    def __init__(self, backbone: Backbone, *, num_classes: int, head_hidden: int = 256,
                 dropout: float = 0.2) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = EmotionHead(
            num_layers=backbone.num_layers,
            dim=backbone.dim,
            num_classes=num_classes,
            hidden=head_hidden,
            dropout=dropout,
        )

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(waveform))


class ProbabilityModel(nn.Module):
    """What gets exported: softmax over the network's logits."""

    def __init__(self, net: EmotionNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.net(waveform).float(), dim=-1)
