"""Models: ``build_model(config)`` -> MultiLabelNet, ``build_loss(config)`` -> loss module."""
from models.arcface import ArcFaceHead
from models.build import MultiLabelNet, build_loss, build_model
from models.psa import PolarizedSelfAttention, PSANeck

__all__ = [
    "ArcFaceHead",
    "MultiLabelNet",
    "PolarizedSelfAttention",
    "PSANeck",
    "build_loss",
    "build_model",
]
