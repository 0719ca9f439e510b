"""Typed configuration: nested dataclasses, YAML recipes, dotted command-line overrides.

Precedence (lowest to highest): dataclass defaults < YAML file < ``section.key=value`` arguments.
Built on OmegaConf structured configs, so types are checked on merge; ranges and choices are
checked in ``__post_init__`` when the merged config becomes plain dataclasses. Every failure is a
``ConfigError`` that names the key and what would be valid, raised before any work starts.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from vlp.config_overrides import INDEX_IN_KEY, apply_overrides, field_type
from vlp.errors import ConfigError


FULL_PRECISION_NAMES = ("fp32", "no", "False")
"""Spellings of train.precision meaning full precision: 'no' is accelerate's name for it."""


def resume_choice(value: Any) -> str:
    """``train.resume`` in one spelling: 'auto', 'false', or a path (YAML's true/false and their
    string forms are accepted)."""
    text = str(value).strip()
    if value is True or text.lower() in ("auto", "true", "yes", "on", "1"):
        return "auto"
    if value is False or value is None or text.lower() in ("false", "no", "off", "0", "none", ""):
        return "false"
    return text


def _check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {message}")


def _check_choice(value: str, key: str, choices: Sequence[str]) -> None:
    _check(value in choices, key, f"got {value!r}, valid choices: {', '.join(map(str, choices))}")


@dataclass
class SourceConfig:
    shards: str = ""
    """Shard spec of this source (same forms as data.train_shards)."""
    weight: float = 1.0
    """Relative sampling rate of this source (weights other than equal need data.resampled=true)."""


@dataclass
class DataConfig:
    train_shards: str = "data/shapes/train"
    """Training shards: a directory of .tar files, a brace pattern (dir/shard-{000000..000009}.tar), a file://, s3://, gs:// or https:// URL or a pipe: command, or several joined by '::'."""
    num_samples: Optional[int] = None
    """Samples per epoch; None reads sizes.json beside the shards."""
    workers: int = 1
    """DataLoader worker processes per rank (0 decodes in the training process)."""
    shuffle_buffer: int = 2000
    """Samples held in the shuffle buffer (0 disables sample shuffling)."""
    resize_scale: List[float] = field(default_factory=lambda: [0.85, 1.0])
    """Area range of the random resized crop in training (1.0, 1.0 disables it)."""
    color_jitter: float = 0.0
    """Brightness/contrast jitter strength in training (0 disables; keep 0 when captions name colours)."""
    caption_key: str = "txt"
    """Sample field holding the caption text."""
    image_keys: List[str] = field(default_factory=lambda: ["jpg", "jpeg", "png", "webp"])
    """Sample fields tried in order for the image."""
    sources: List[SourceConfig] = field(default_factory=list)
    """Several shard sources [{shards, weight}] mixed by weight; when set they replace train_shards."""
    resampled: bool = False
    """Draw shards with replacement per rank and worker (endless, for multi-node and weighted mixes); false: each sample once per epoch."""
    num_negatives: int = 0
    """Hard-negative captions per sample (from key.neg.json) passed as batch neg_text [B, K, context]; 0 disables."""
    image_views: int = 1
    """Augmented views per image: 2 adds batch image_aug (a second random crop) for the intra_modal / mv_infonce objectives."""
    text_views: int = 1
    """Views per caption: 2 adds batch text_aug (another caption of the sample, else the caption with ~10% of words dropped)."""
    jpeg_draft: bool = True
    """Decode large JPEGs at a reduced DCT size that still keeps the smallest crop at full resolution."""
    skip_log_interval_s: float = 60.0
    """Seconds between log lines about skipped (corrupt) samples; the first skip is logged at once."""

    def __post_init__(self) -> None:
        _check(self.workers >= 0, "data.workers", f"must be >= 0, got {self.workers}")
        _check(self.shuffle_buffer >= 0, "data.shuffle_buffer", f"must be >= 0, got {self.shuffle_buffer}")
        _check(self.num_samples is None or self.num_samples > 0, "data.num_samples", "must be > 0 or null")
        lo_hi = list(self.resize_scale)
        _check(len(lo_hi) == 2 and 0 < lo_hi[0] <= lo_hi[1] <= 1, "data.resize_scale",
               f"must be [low, high] with 0 < low <= high <= 1, got {lo_hi}")
        _check(0 <= self.color_jitter <= 1, "data.color_jitter", f"must be in [0, 1], got {self.color_jitter}")
        _check(bool(self.train_shards), "data.train_shards", "must name the training shards")
        _check(self.num_negatives >= 0, "data.num_negatives", f"must be >= 0, got {self.num_negatives}")
        _check(self.image_views in (1, 2), "data.image_views", f"must be 1 or 2, got {self.image_views}")
        _check(self.text_views in (1, 2), "data.text_views", f"must be 1 or 2, got {self.text_views}")
        _check(self.skip_log_interval_s > 0, "data.skip_log_interval_s", f"must be > 0, got {self.skip_log_interval_s}")
        for i, src in enumerate(self.sources):
            _check(bool(src.shards), f"data.sources[{i}].shards", "must name the source's shards")
            _check(src.weight > 0, f"data.sources[{i}].weight", f"must be > 0, got {src.weight}")
        _check(self.resampled or len({s.weight for s in self.sources}) <= 1, "data.sources",
               "different weights need data.resampled=true (epoch mode reads every shard once)")


@dataclass
class ModelConfig:
    arch: Any = "ViT-B-32"
    """open_clip architecture: a model config name (open_clip.list_models()), a dict {embed_dim, vision_cfg, text_cfg}, or a local folder's: 'local-dir:DIR' (an open_clip local-dir) or 'hf:DIR' (a transformers CLIP folder), to fine-tune it with model.init_from=DIR."""
    tokenizer: str = "open_clip"
    """Text tokenizer: 'open_clip' (the BPE in open_clip's wheel), 'hf:DIR' (a local Hugging Face tokenizer directory: its own ids, open_clip's tower pools at its end token) or 'sentencepiece:FILE.model'; the last two set open_clip's text tower's vocab_size."""
    init_logit_scale: float = math.log(1 / 0.07)
    """Initial log of the contrastive temperature's inverse (CLIP: log(1/0.07))."""
    max_logit_scale: float = 100.0
    """Upper clamp of exp(logit_scale)."""
    init_logit_bias: Optional[float] = None
    """Initial learnable logit bias (SigLIP: -10 with init_logit_scale log(10)); null: no bias parameter."""
    quick_gelu: bool = False
    """Use QuickGELU activations (OpenAI CLIP weights were trained with it)."""
    init_from: Optional[str] = None
    """Local weights to start both towers (and the logit head) from: an open_clip checkpoint (.pt/.bin/.safetensors, or a local-dir with open_clip_config.json), a transformers CLIPModel folder, or a run directory, checkpoint or safetensors export of ours; null is random init. A resumed run reads it again, then loads its own checkpoint over it."""
    init_image_from: Optional[str] = None
    """The same sources as model.init_from, loading the image tower only (applied after init_from; its shapes must fit the arch)."""
    init_text_from: Optional[str] = None
    """The same sources as model.init_from, loading the text tower only (applied after init_from; its shapes must fit the arch)."""
    pretrained: Optional[str] = None
    """Alias of model.init_from (the older name; set one of the two)."""
    lock_image: bool = False
    """Freeze the image tower (LiT) through open_clip's visual.lock: its parameters get no gradient and no optimizer state."""
    lock_image_unlocked_groups: int = 0
    """With lock_image: leave this many of the image tower's last layer groups trainable (open_clip's unlocked_groups; a ViT has layers + 2 groups)."""
    lock_image_freeze_bn_stats: bool = False
    """With lock_image: also freeze BatchNorm running statistics (ResNet and timm towers; a ViT has none)."""
    lock_text: bool = False
    """Freeze the text tower (open_clip's lock_text_tower, or the HF tower's lock)."""
    lock_text_unlocked_layers: int = 0
    """With lock_text: leave this many of the text tower's last layer groups trainable (open_clip's unlocked_layers)."""
    lock_text_freeze_layer_norm: bool = True
    """With lock_text: keep LayerNorms frozen too (false only for HF text towers, as open_clip allows)."""
    grad_checkpointing: bool = False
    """Recompute each transformer block in the backward pass instead of storing its activations (open_clip's set_grad_checkpointing, both towers): less memory, more compute, same gradients."""
    patch_dropout: float = 0.0
    """FLIP: fraction of image patches dropped at random in training (0 = off, e.g. 0.5; open_clip's PatchDropout, ViT towers only); evaluation always sees every patch. FLIP ends with a short run without it: init_from the run's checkpoint with patch_dropout 0."""
    image_tower: str = "open_clip"
    """Image tower by registered name (vlp.models.towers): 'open_clip' builds open_clip's vision tower (ViT, ResNet or timm) from arch.vision_cfg."""
    text_tower: str = "open_clip"
    """Text tower by registered name: 'open_clip' builds open_clip's text transformer from arch.text_cfg, or its transformers tower when text_cfg.hf_model_name is set."""
    heads: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    """Optional heads by registered name (vlp.models.heads) with their options, {name: {option: value}}; each adds its outputs to the outputs dict."""

    def __post_init__(self) -> None:
        from vlp.model_config_checks import check_model_config

        check_model_config(self)


@dataclass
class LossTermConfig:
    name: str = "clip"
    """Registered objective name (see vlp.losses.registry)."""
    weight: float = 1.0
    """Multiplier of this term in the total loss."""
    options: Dict[str, Any] = field(default_factory=dict)
    """Keyword options of the term (checked against the term's signature at start-up)."""


@dataclass
class LossConfig:
    terms: List[LossTermConfig] = field(default_factory=lambda: [LossTermConfig()])
    """Objectives summed into the total loss, each logged separately."""

    def __post_init__(self) -> None:
        from vlp.losses.registry import validate_terms

        _check(len(self.terms) > 0, "loss.terms", "needs at least one term")
        validate_terms(self.terms)


@dataclass
class OptimConfig:
    lr: float = 5e-4
    """Peak learning rate."""
    weight_decay: float = 0.2
    """AdamW decoupled weight decay (not applied to norms, biases, embeddings, logit scale)."""
    betas: List[float] = field(default_factory=lambda: [0.9, 0.98])
    """AdamW betas."""
    eps: float = 1e-6
    """AdamW epsilon."""
    warmup_steps: int = 500
    """Linear warmup steps from 0 to the peak rate."""
    schedule: str = "cosine"
    """Rate after warmup: 'cosine' decays to min_lr_ratio * lr along a half cosine, 'linear' along a straight line (CoCa), 'constant' stays at lr."""
    min_lr_ratio: float = 0.0
    """Final rate of the cosine or linear schedule as a fraction of the peak."""
    grad_clip_norm: Optional[float] = 1.0
    """Clip the global gradient norm to this value; null disables."""

    def __post_init__(self) -> None:
        _check(self.lr > 0, "optim.lr", f"must be > 0, got {self.lr}")
        _check(self.weight_decay >= 0, "optim.weight_decay", f"must be >= 0, got {self.weight_decay}")
        _check(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "optim.betas",
               f"must be two values in [0, 1), got {list(self.betas)}")
        _check(self.eps > 0, "optim.eps", "must be > 0")
        _check(self.warmup_steps >= 0, "optim.warmup_steps", f"must be >= 0, got {self.warmup_steps}")
        _check_choice(self.schedule, "optim.schedule", ["cosine", "linear", "constant"])
        _check(0 <= self.min_lr_ratio <= 1, "optim.min_lr_ratio", f"must be in [0, 1], got {self.min_lr_ratio}")
        _check(self.grad_clip_norm is None or self.grad_clip_norm > 0, "optim.grad_clip_norm", "must be > 0 or null")


@dataclass
class TrainConfig:
    steps: int = 1000
    """Optimizer steps to train for."""
    batch_size: int = 256
    """Samples per process per step (the contrastive batch is this times the number of processes)."""
    seed: int = 0
    """Seed of model init, data order and augmentation."""
    output_dir: str = "runs"
    """Parent directory of run directories."""
    run_name: Optional[str] = None
    """Run directory name under output_dir; None makes one from the time."""
    precision: str = "fp32"
    """Numeric precision: 'fp32' (full precision; 'no' is the same), 'bf16' or 'fp16' autocast (fp16 with a gradient scaler), on GPU or CPU, or 'pure_bf16' (weights, gradients and optimizer state in bfloat16, no autocast: half the memory, less exact)."""
    accum_steps: int = 1
    """Gradient caching (GradCache / BASIC): each step takes this many loader batches of batch_size, encodes them without a graph, computes the objective over all of them, then back-propagates each in turn: the update of a batch accum_steps times larger in the memory of one (global batch = batch_size x processes x accum_steps)."""
    ema_decay: Optional[float] = None
    """Keep an exponential moving average of the weights with this decay per step (e.g. 0.9999); it is checkpointed, evaluated at the end and exported. null: no EMA."""
    compile: bool = False
    """Run the model through torch.compile (needs a C++ compiler on CPU); the first steps are slower while it compiles."""
    channels_last: bool = False
    """Keep images and a convolutional image tower in channels-last memory format (faster convolutions on recent GPUs and CPUs; no effect on a ViT)."""
    log_every: int = 10
    """Steps between metric lines in metrics.jsonl."""
    checkpoint_every: int = 500
    """Steps between checkpoints (one is always written at the end)."""
    checkpoint_minutes: Optional[float] = None
    """Also checkpoint when this many minutes have passed since the last checkpoint (decided on rank 0 for all ranks); null: by steps only."""
    keep_checkpoints: int = 2
    """How many step checkpoints to keep (the final one is always kept)."""
    resume: Any = "auto"
    """'auto': continue from the newest checkpoint in the run directory if there is one; a path (a checkpoint file or a run directory): continue from that checkpoint; 'false': start over (an old run in the directory is moved aside)."""
    report_to: str = "tensorboard"
    """Trackers through accelerate: 'tensorboard' (event files in the run directory's tensorboard/), 'wandb', both as 'tensorboard,wandb', or 'none'; metrics.jsonl is always written."""
    plot: bool = True
    """At the end, draw the loss curves and eval metrics against samples seen into training_curves.png in the run directory (needs matplotlib)."""
    threads: Optional[int] = None
    """torch intra-op threads on CPU; None keeps torch's default."""
    retain_freed_memory: bool = True
    """Keep freed host memory for reuse instead of giving it back to the OS each step (glibc malloc options; vlp/train/host_memory.py): no page faults on the buffers every step allocates again (30-40% of a CPU bfloat16 step), at the cost of holding the peak heap."""

    def __post_init__(self) -> None:
        for key in ("steps", "batch_size", "log_every", "checkpoint_every", "keep_checkpoints"):
            value = getattr(self, key)
            _check(value > 0, f"train.{key}", f"must be > 0, got {value}")
        if self.precision in FULL_PRECISION_NAMES:
            self.precision = "fp32"  # one name for full precision ('False' is YAML 1.1's reading of `no`)
        _check_choice(self.precision, "train.precision", ["fp32", "bf16", "fp16", "pure_bf16"])
        _check(self.threads is None or self.threads > 0, "train.threads", "must be > 0 or null")
        _check(self.accum_steps >= 1, "train.accum_steps", f"must be >= 1, got {self.accum_steps}")
        _check(self.ema_decay is None or 0 < self.ema_decay < 1, "train.ema_decay", "must be in (0, 1) or null")
        _check(self.checkpoint_minutes is None or self.checkpoint_minutes > 0, "train.checkpoint_minutes",
               "must be > 0 or null")
        self.resume = resume_choice(self.resume)
        self.report_to = ",".join(part.strip() for part in str(self.report_to).split(",") if part.strip()) or "none"
        for part in self.report_to.split(","):
            _check_choice(part, "train.report_to", ["tensorboard", "wandb", "none"])
        _check("none" not in self.report_to.split(",") or self.report_to == "none", "train.report_to",
               "'none' cannot be combined with a tracker")


@dataclass
class EvalConfig:
    builtin_root: Optional[str] = "data/shapes/eval"
    """Directory with the built-in eval sets (zeroshot/, retrieval/, compositional/); null skips them."""
    at_end: bool = True
    """Evaluate on the built-in sets after training."""
    batch_size: int = 256
    """Batch size for evaluation encoding."""
    cache: bool = True
    """Keep the end-of-training evaluation's embeddings in the eval cache ($VLP_CACHE_DIR or ~/.cache/vlp/eval)."""
    every: int = 0
    """Evaluate during training every this many steps on the built-in sets' every_tasks, logged as metrics (eval/<set>/<metric>); 0: only at the end."""
    every_tasks: List[str] = field(default_factory=lambda: ["zeroshot", "retrieval"])
    """The eval tasks (by registered name) the periodic evaluation runs on the built-in sets."""

    def __post_init__(self) -> None:
        _check(self.batch_size > 0, "eval.batch_size", f"must be > 0, got {self.batch_size}")
        _check(self.every >= 0, "eval.every", f"must be >= 0 (0: off), got {self.every}")


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self) -> None:
        from vlp.losses.registry import check_term_inputs
        from vlp.models.outputs import available_outputs

        check_term_inputs(self.loss.terms, available_outputs(self.model, self.data))


def _valid_keys(schema: Any, prefix: str = "") -> List[str]:
    """All dotted keys of a dataclass tree, for 'did you mean' messages; the fields of list items
    appear once under an empty index (``loss.terms[].weight``)."""
    keys = []
    for f in fields(schema):
        dotted = f"{prefix}{f.name}"
        keys.append(dotted)
        value = getattr(schema, f.name)
        if is_dataclass(value):
            keys.extend(_valid_keys(value, dotted + "."))
        item_type = field_type(type(schema), [f.name, "0"])
        if is_dataclass(item_type):
            keys.extend(_valid_keys(item_type(), dotted + "[]."))
    return keys


def _closest_key(key: str) -> Optional[str]:
    """The valid key nearest to ``key`` (indices of list items kept as the user gave them)."""
    indices = INDEX_IN_KEY.findall(key)
    generic = INDEX_IN_KEY.sub("[]", key)
    valid = _valid_keys(Config())
    close = difflib.get_close_matches(generic, valid, n=1, cutoff=0.5)
    section = generic.rsplit(".", 1)[0] if "." in generic else ""
    if not close and section:
        siblings = [k for k in valid if k.startswith(section + ".")]
        close = difflib.get_close_matches(generic, siblings, n=1, cutoff=0.0)
    if not close:
        return None
    out = close[0]
    for index in indices:
        out = out.replace("[]", f"[{index}]", 1)
    return out


def _explain(err: OmegaConfBaseException) -> ConfigError:
    key = getattr(err, "full_key", None) or ""
    if isinstance(err, ConfigKeyError) or "not in struct" in str(err) or "Key '" in str(err):
        close = _closest_key(key) if key else None
        hint = f"; did you mean {close!r}?" if close else ""
        return ConfigError(f"{key or '?'}: unknown config key{hint}")
    msg = str(err).splitlines()[0]
    return ConfigError(f"{key or '?'}: {msg}")


def load_config(path: Optional[str | Path] = None, overrides: Sequence[str] = ()) -> Config:
    """Defaults, then the YAML file at ``path``, then ``section.key=value`` overrides (list items by
    index: ``loss.terms.0.weight=0.5`` or ``loss.terms[0].weight=0.5``)."""
    schema = OmegaConf.structured(Config)
    layers: List[DictConfig] = []
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        layers.append(OmegaConf.load(path))
    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise ConfigError(f"overrides must look like section.key=value, got {bad}")
    try:
        merged = OmegaConf.merge(schema, *layers)
        problem = apply_overrides(merged, Config, overrides)
        if problem:
            raise ConfigError(problem)
        cfg = OmegaConf.to_object(merged)
    except OmegaConfBaseException as err:
        raise _explain(err) from None
    assert isinstance(cfg, Config)
    return cfg


def config_to_yaml(cfg: Config) -> str:
    """The fully resolved config as YAML (what is saved in the run directory)."""
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def config_from_yaml(text: str) -> Config:
    """Inverse of config_to_yaml, with the same validation as load_config."""
    try:
        cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(Config), OmegaConf.create(text)))
    except OmegaConfBaseException as err:
        raise _explain(err) from None
    assert isinstance(cfg, Config)
    return cfg
