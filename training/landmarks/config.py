"""The landmark training recipe: every number a run depends on, in one typed record."""

from __future__ import annotations

from dataclasses import dataclass, field

from training.landmarks.augment import AugmentConfig


@dataclass(frozen=True)
class StcConfig:
    """Self-training with curriculum: rounds of re-label, re-initialise, train.

    ``coarse_sizes[r]`` is the side of the coarse score map that supervises pseudo-labelled
    faces in round r (0 = full targets). Each round trains ``epochs`` epochs on the labelled
    faces plus ``unlabeled_per_round`` pseudo-labelled faces (a random subset per round).
    """

    rounds: int = 0
    coarse_sizes: tuple[int, ...] = (2, 4, 0)
    epochs: int = 40
    milestones: tuple[int, ...] = (25, 35)
    unlabeled_per_round: int = 2000
    cfp_fraction: float = 0.5  # share of CFP photos (half of them profiles) among unlabeled faces
    min_detection_score: float = 0.6
    # A trained checkpoint that pseudo-labels the first round instead of this run's supervised
    # stage, which is then skipped (e.g. the shipped model: STC on top of it).
    teacher: str = ""


@dataclass(frozen=True)
class LandmarkTrainConfig:
    """One landmark recipe. ``batch_size`` is the global batch: under torchrun each of the N
    processes takes ``batch_size / N`` (training.runtime); ``workers`` are DataLoader processes
    per training process."""

    # where it runs (training.runtime): the device ("auto" = CUDA where available; --device
    # overrides), the network's precision (fp32 | bf16 | fp16: fp16 needs CUDA, on a CPU it is
    # refused; the loss is always fp32) and NHWC memory ("auto" = on a GPU only: a CPU run
    # computes exactly what it did before these options existed)
    device: str = "auto"
    precision: str = "fp32"
    channels_last: str = "auto"
    backbone: str = "mobilenetv2"
    backbone_options: dict = field(default_factory=dict)
    input_size: int = 256
    num_nb: int = 10
    batch_size: int = 16
    lr: float = 1e-4
    epochs: int = 60
    milestones: tuple[int, ...] = (30, 50)
    gamma: float = 0.1
    score_weight: float = 10.0
    nb_weight: float = 1.0
    val_fraction: float = 0.2
    split_seed: int = 0
    seed: int = 0
    threads: int = 2
    workers: int = 1
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    stc: StcConfig = field(default_factory=StcConfig)
    # Partial labels from CFP's hand-marked fiducials (edge.datasets.cfp_fiducials) on these
    # protocol folds, frontal and profile, beside 300-W's full labels; cropped from BlazeFace
    # boxes by the device's crop policy. Fold 9 is the test fold and is refused.
    cfp_folds: tuple[int, ...] = ()
    cfp_min_detection_score: float = 0.6
    # CPU budget: each epoch draws this many of the CFP faces afresh (0 = all of them), with
    # profiles at ``cfp_profile_share`` of the draw (0 = their natural share, 2 in 7).
    cfp_per_epoch: int = 0
    cfp_profile_share: float = 0.0
    # Start from a trained checkpoint's weights (a landmark run's best.pt / a shipped .pt; same
    # backbone) instead of a fresh initialisation; the schedule above then fine-tunes it.
    init_from: str = ""
    # The backbone's learning rate is lr x this (below 1: a pretrained trunk moves slower than the
    # freshly initialised heads).
    backbone_lr_scale: float = 1.0

    def __post_init__(self) -> None:
        if self.precision not in ("fp32", "bf16", "fp16"):
            raise ValueError(f"precision: expected fp32, bf16 or fp16, got {self.precision!r}")
        if self.channels_last not in ("auto", "on", "off"):
            raise ValueError(f"channels_last: expected auto, on or off, got {self.channels_last!r}")
        if 9 in self.cfp_folds:
            raise ValueError("cfp_folds: CFP fold 9 is the test fold and is never trained on")
        if self.backbone != "dlib_resnet" and self.input_size % 32:
            raise ValueError(f"input_size must be a multiple of 32 (the stride), got {self.input_size}")
        if not 0.0 <= self.cfp_profile_share <= 1.0:
            raise ValueError(f"cfp_profile_share must be in [0, 1], got {self.cfp_profile_share}")
        if list(self.milestones) != sorted(self.milestones):
            raise ValueError(f"milestones must be increasing, got {self.milestones}")

    @property
    def map_size(self) -> int:
        """Side of the score map (input/32 for padded backbones; dlib's unpadded trunk: smaller)."""
        from training.nn.backbones import feature_size

        return feature_size(self.backbone, dict(self.backbone_options), self.input_size)

    @property
    def stride(self) -> float:
        """Input pixels per map cell."""
        return self.input_size / self.map_size
