"""Where the shipped models live: the one place that names the default files.

The runtime config, enrolment, the demos, the fault campaign and the build tools read these
constants, so switching the default identity model is one line here.
"""

from __future__ import annotations

from pathlib import Path

MODELS_DIR = Path(__file__).resolve().parent / "models"
# The default landmark model (the light PIPNet trained on 300-W and CFP's profile fiducials, plus
# one round of self-training: recipe training/landmarks/configs/light_cfp_stc_cpu.toml, one pass
# per face), and the 300-W-only model the profile work started from (kept for side-by-side
# benches and evals; see MODEL_CARD.md).
SHIPPED_LANDMARKS = MODELS_DIR / "landmarks" / "pipnet_light_stc.onnx"
PREVIOUS_LANDMARKS = MODELS_DIR / "landmarks" / "pipnet_light.onnx"
# The default identity model (dlib's CC0 ResNet fine-tuned by training/identity, recipe
# configs/dlib/shipped.toml), and the small MobileFaceNet trained from scratch that it replaced
# (still shipped: a fraction of the cost per face, much weaker; see MODEL_CARD_poseface_mfn.md).
SHIPPED_IDENTITY_MFN = MODELS_DIR / "identity" / "poseface_mfn.onnx"
SHIPPED_IDENTITY = MODELS_DIR / "identity" / "poseface_r29.onnx"


def card_path(model: Path) -> Path:
    """``MODEL_CARD.md`` for a shipped default model (the quantization report adds to it),
    ``MODEL_CARD_<stem>.md`` for any other model in its folder."""
    model = Path(model)
    if model.resolve() in (SHIPPED_LANDMARKS.resolve(), SHIPPED_IDENTITY.resolve()):
        return model.parent / "MODEL_CARD.md"
    return model.parent / f"MODEL_CARD_{model.stem}.md"
