"""The emotion model: labels, preprocessing, backbones, ONNX Runtime sessions, weights.

Serving code needs only numpy and onnxruntime from here; the torch modules
(``models.backbones``, ``models.head``, ``models.network``) are imported on demand.
"""

from models.card import ModelCard, ModelCardError
from models.inference import DEFAULT_MODEL_DIR, EmotionModel, load_model
from models.labels import EMOTIONS_5, EMOTIONS_8

__all__ = [
    "DEFAULT_MODEL_DIR",
    "EMOTIONS_5",
    "EMOTIONS_8",
    "EmotionModel",
    "ModelCard",
    "ModelCardError",
    "load_model",
]
