"""Why a model decided: ``gradcam`` (Grad-CAM maps and every picture of the explanations), ``attention``
(rollout of ViT-family models, Swin's window attention, per-layer feature maps)."""
