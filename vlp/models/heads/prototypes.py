"""The prototype head (ProtoCLIP / SwAV): K unit-norm prototypes and each modality's scores against them.

``model.heads={prototypes: {num_prototypes: 64}}`` adds to the outputs dict:

- ``proto_image_emb`` / ``proto_text_emb`` [B, d]: the L2-normalised embeddings in the prototype
  space (``image_emb`` / ``text_emb`` themselves, or their projection with ``projection_dim``);
- ``proto_image_scores`` / ``proto_text_scores`` [B, K]: cosine similarities of those embeddings
  to the (unit-norm) prototypes, the scores the ``prototype`` loss term reads;
- ``proto_image_aug_scores`` / ``proto_text_aug_scores`` [B, K]: the same for the second views,
  only when the batch has them (``data.image_views=2`` / ``data.text_views=2``).

Prototypes are normalised in the forward pass and renormalised in place after every optimizer
step (SwAV), so weight decay never shrinks them. The scores are computed in at least float32
outside autocast. With ``kmeans_episode`` the head keeps the embeddings it sees in training and,
every full episode, replaces the prototypes by spherical k-means centroids
(:mod:`vlp.models.heads.kmeans`); the first episode initialises them. ``step_metrics`` reports
prototype usage over the global batch (collapse shows as low entropy and many unused prototypes).
"""

from __future__ import annotations

import math
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from vlp.errors import ConfigError
from vlp.models.heads.kmeans import EpisodeBuffer, episode_prototypes
from vlp.models.heads.registry import Head, is_replay, register_head

MODALITIES = ("image", "text")


def _embedding_dim(text_tower: nn.Module) -> int:
    """The embedding width, read from one forward pass of the text tower on a single padded
    caption (eval mode and no gradient, so no dropout draws from the random stream)."""
    ids = torch.zeros(1, int(text_tower.context_length), dtype=torch.long,
                      device=next(text_tower.parameters()).device)
    was_training = text_tower.training
    text_tower.eval()
    with torch.no_grad():
        width = int(text_tower(ids).shape[-1])
    text_tower.train(was_training)
    return width


@register_head("prototypes")
class PrototypeHead(Head):
    """K learnable unit-norm prototypes (shared by both modalities or one set each) and the
    cosine scores of each modality's embeddings against them.

    Options: ``num_prototypes`` (K >= 2); ``shared`` (one set for both modalities, else one per
    modality); ``projection_dim`` (0: prototypes on the normalised embeddings; else a linear map
    per modality to this width, L2-normalised); ``kmeans_episode`` (pairs per rank per episode of
    the episodic k-means, 0 = off; at least K); ``kmeans_niter`` (k-means iterations);
    ``kmeans_seed`` (k-means seed, plus the episode number); ``kmeans_nredo`` (k-means runs per
    episode, the one with the lowest objective kept); ``kmeans_refresh`` (cluster every episode; False: only the
    first, as an initialisation); ``learn_prototypes`` (False: the prototypes take no gradient and
    only the k-means moves them, which ProtoCLIP's back translation without a within-modality
    term needs, see :meth:`check_terms`).
    """

    provides = ("proto_image_emb", "proto_text_emb", "proto_image_scores", "proto_text_scores",
                "proto_image_aug_scores", "proto_text_aug_scores")

    def __init__(self, image_tower: nn.Module, text_tower: nn.Module, num_prototypes: int = 256, shared: bool = False,
                 projection_dim: int = 0, kmeans_episode: int = 0, kmeans_niter: int = 20, kmeans_seed: int = 0,
                 kmeans_nredo: int = 1, kmeans_refresh: bool = True, learn_prototypes: bool = True) -> None:
        super().__init__(image_tower, text_tower)
        self.check_options(dict(num_prototypes=num_prototypes, projection_dim=projection_dim,
                                kmeans_episode=kmeans_episode, kmeans_niter=kmeans_niter, kmeans_nredo=kmeans_nredo,
                                learn_prototypes=learn_prototypes))
        self.num_prototypes, self.shared = int(num_prototypes), bool(shared)
        self.kmeans_niter, self.kmeans_nredo, self.kmeans_seed = int(kmeans_niter), int(kmeans_nredo), int(kmeans_seed)
        self.kmeans_refresh = bool(kmeans_refresh)
        width = _embedding_dim(text_tower)
        dim = int(projection_dim) or width
        self.projections = nn.ModuleDict({m: nn.Linear(width, dim) for m in MODALITIES}) if projection_dim else None
        names = ("shared",) if self.shared else MODALITIES
        self.prototypes = nn.ParameterDict({n: nn.Parameter(F.normalize(torch.randn(self.num_prototypes, dim), dim=-1),
                                                         requires_grad=bool(learn_prototypes)) for n in names})
        self.register_buffer("kmeans_episodes", torch.zeros((), dtype=torch.long))
        self.episode = EpisodeBuffer(int(kmeans_episode))

    @classmethod
    def check_options(cls, options: Mapping[str, Any], key: str = "model.heads.prototypes") -> None:
        """ConfigError for an option value the head cannot work with (checked when the config is read)."""
        k = int(options.get("num_prototypes", 256))
        if k < 2:
            raise ConfigError(f"{key}.num_prototypes: needs at least 2 prototypes, got {k}")
        if int(options.get("projection_dim", 0)) < 0:
            raise ConfigError(f"{key}.projection_dim: 0 (no projection) or a positive width, got {options['projection_dim']}")
        episode = int(options.get("kmeans_episode", 0))
        if episode and episode < k:
            raise ConfigError(f"{key}.kmeans_episode: 0 (off) or at least num_prototypes={k} pairs per rank, got {episode}")
        for name, default in (("kmeans_niter", 20), ("kmeans_nredo", 1)):
            if int(options.get(name, default)) < 1:
                raise ConfigError(f"{key}.{name}: at least 1, got {options[name]}")
        if not options.get("learn_prototypes", True) and not episode:
            raise ConfigError(f"{key}.learn_prototypes: false with kmeans_episode=0 leaves the prototypes at their "
                              f"random init; set {key}.kmeans_episode (the k-means moves them) or learn_prototypes=true")

    @classmethod
    def check_terms(cls, options: Mapping[str, Any], terms: Sequence[Any], key: str = "model.heads.prototypes") -> None:
        """ConfigError for a trainable parameter of the head that no ``prototype`` term trains (DDP
        without ``find_unused_parameters`` refuses one): the projections need some prototype term;
        learnable prototypes need one whose gradient reaches them, i.e. without ``back_translation``
        or with ``within_weight`` > 0 (back translation scores against detached centroids and the
        codes take no gradient)."""
        proto_terms = [(i, dict(t.options or {})) for i, t in enumerate(terms) if t.name == "prototype"]
        if not proto_terms and (options.get("projection_dim") or options.get("learn_prototypes", True)):
            raise ConfigError(f"{key}: no loss term reads the head's outputs, so nothing trains its parameters; "
                              "add {name: prototype} to loss.terms or remove the head")
        trains = any(not o.get("back_translation") or float(o.get("within_weight", 0.0)) != 0 for _, o in proto_terms)
        if proto_terms and options.get("learn_prototypes", True) and not trains:
            i = proto_terms[0][0]
            raise ConfigError(f"{key}.learn_prototypes: loss.terms[{i}] (prototype) has back_translation=true and "
                              "within_weight=0, so no gradient reaches the prototypes (only the episodic k-means "
                              f"moves them); set {key}.learn_prototypes=false, or loss.terms[{i}].options.within_weight > 0")

    @classmethod
    def provides_for(cls, options: Mapping[str, Any]) -> Tuple[str, ...]:
        """The outputs (whatever the options); the option values are checked here, when the config is read."""
        cls.check_options(options)
        return tuple(cls.provides)

    def prototype_matrix(self, modality: str) -> torch.Tensor:
        """The unit-norm prototypes [K, d] the ``modality`` ('image' or 'text') is scored against."""
        return F.normalize(self.prototypes["shared" if self.shared else modality], dim=-1)

    def embed(self, modality: str, emb: torch.Tensor) -> torch.Tensor:
        """``emb`` [B, D] in the prototype space, L2-normalised, in at least float32."""
        emb = emb.to(torch.promote_types(emb.dtype, torch.float32))
        if self.projections is not None:
            emb = self.projections[modality](emb.to(self.projections[modality].weight.dtype))
        return F.normalize(emb, dim=-1)

    def forward(self, inputs: Mapping[str, torch.Tensor], outputs: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        added: Dict[str, torch.Tensor] = {}
        device = outputs["image_emb"].device
        with torch.autocast(device_type=device.type, enabled=False):
            for m in MODALITIES:
                emb = self.embed(m, outputs[f"{m}_emb"])
                protos = self.prototype_matrix(m).to(emb.dtype)
                added[f"proto_{m}_emb"], added[f"proto_{m}_scores"] = emb, emb @ protos.T
                if f"{m}_emb_aug" in outputs:
                    added[f"proto_{m}_aug_scores"] = self.embed(m, outputs[f"{m}_emb_aug"]) @ protos.T
        if self.training and self.collecting and not is_replay():  # a replayed forward: kept already
            self.episode.add(added["proto_image_emb"], added["proto_text_emb"])
        return added

    @property
    def collecting(self) -> bool:
        """Whether training forwards keep their embeddings for the episodic k-means."""
        return bool(self.episode.size) and (self.kmeans_refresh or int(self.kmeans_episodes) == 0)

    def step_metrics(self, outputs: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """Per modality, over the global batch (summed over ranks): ``<m>_usage_entropy``, the
        entropy (nats; log K at uniform use) of the histogram of each sample's argmax prototype,
        and ``<m>_unused``, the number of prototypes no sample has as its argmax."""
        metrics: Dict[str, torch.Tensor] = {}
        for m in MODALITIES:
            scores = outputs[f"proto_{m}_scores"].detach()
            counts = torch.bincount(scores.argmax(dim=1), minlength=self.num_prototypes).to(torch.float64)
            if dist.is_available() and dist.is_initialized():
                dist.all_reduce(counts)
            share = counts / counts.sum().clamp(min=1)
            metrics[f"{m}_usage_entropy"] = -(share * share.clamp(min=1e-30).log()).sum()
            metrics[f"{m}_unused"] = (counts == 0).sum()
        return metrics

    def after_step(self) -> None:
        """Renormalise the prototypes; when an episode is full, replace them by its k-means centroids."""
        with torch.no_grad():
            for param in self.prototypes.values():
                param.copy_(F.normalize(param, dim=-1))
        if self.collecting and self.episode.full:
            self.refresh_from_episode()

    def rank_state(self) -> Optional[Dict[str, Any]]:
        """This rank's partly filled episode (its pairs so far), for an exact resume."""
        if not self.episode.count:
            return None
        image, text = self.episode.take()
        self.episode.add(image, text)
        return {"image": image, "text": text}

    def load_rank_state(self, state: Optional[Dict[str, Any]]) -> None:
        if self.episode.count:
            self.episode.take()  # emptied: the saved episode replaces it
        if state:
            self.episode.add(state["image"], state["text"])

    def refresh_from_episode(self) -> None:
        """Cluster the episode's pairs (every rank's) and copy the centroids into the prototypes
        (after the first episode only while ``kmeans_refresh``). Collective: every rank calls it."""
        image, text = self.episode.take()
        first = next(iter(self.prototypes.values()))
        protos, text_protos = episode_prototypes(image, text, self.num_prototypes, self.shared, self.kmeans_niter,
                                                 self.kmeans_seed + int(self.kmeans_episodes), first.device,
                                                 nredo=self.kmeans_nredo)
        with torch.no_grad():
            if self.shared:
                self.prototypes["shared"].copy_(protos)
            else:
                self.prototypes["image"].copy_(protos)
                self.prototypes["text"].copy_(text_protos)
        self.kmeans_episodes += 1

    def extra_repr(self) -> str:
        dim = next(iter(self.prototypes.values())).shape[1]
        return (f"num_prototypes={self.num_prototypes}, dim={dim}, shared={self.shared}, "
                f"kmeans_episode={self.episode.size}, log_k={math.log(self.num_prototypes):.3f}")


def usage_names(head_name: str = "prototypes") -> Tuple[str, ...]:
    """The metrics.jsonl keys of :meth:`PrototypeHead.step_metrics` under the head name ``head_name``."""
    return tuple(f"head/{head_name}/{m}_{what}" for m in MODALITIES for what in ("usage_entropy", "unused"))


__all__ = ["PrototypeHead", "usage_names"]
