"""Pooling head: learned layer weights, attentive statistics pooling, a small classifier."""

from __future__ import annotations

import torch
from torch import nn


class AttentiveStatsPool(nn.Module):
    """Attention-weighted mean and standard deviation over time (Okabe et al., 2018)."""

    def __init__(self, dim: int, *, hidden: int = 128) -> None:
        super().__init__()
        self.attention = nn.Sequential(nn.Linear(dim, hidden), nn.Tanh(), nn.Linear(hidden, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(batch, frames, dim)`` → ``(batch, 2 * dim)``."""
        w = torch.softmax(self.attention(x), dim=1)
        mean = (w * x).sum(dim=1)
        var = (w * x * x).sum(dim=1) - mean * mean
        std = torch.sqrt(var.clamp(min=1e-6))
        return torch.cat([mean, std], dim=-1)


class EmotionHead(nn.Module):
    """Mixes the backbone's layers with softmax weights, pools over time and classifies.

    Args:
        num_layers: how many hidden-state layers the backbone returns.
        dim: their width.
        num_classes: output classes.
        hidden: width of the classifier's hidden layer.
        dropout: dropout before each linear layer of the classifier.
    """

    def __init__(
        self, *, num_layers: int, dim: int, num_classes: int, hidden: int = 256, dropout: float = 0.2
    ) -> None:
        super().__init__()
        self.layer_logits = nn.Parameter(torch.zeros(num_layers))
        self.norm = nn.LayerNorm(dim)
        self.pool = AttentiveStatsPool(dim)
        self.classifier = nn.Sequential(
            nn.Dropout(dropout),
            nn.Linear(2 * dim, hidden),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )

    def layer_weights(self) -> torch.Tensor:
        return torch.softmax(self.layer_logits, dim=0)

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        """``(layers, batch, frames, dim)`` → logits ``(batch, classes)``."""
        w = self.layer_weights().to(states.dtype)
        mixed = torch.einsum("l,lbtd->btd", w, states)
        return self.classifier(self.pool(self.norm(mixed)))
