"""What an :class:`~eval.encoding.encoder.Encoder` encodes with: a model identified by a cache
fingerprint and loaded only when something must be encoded.

* :meth:`ModelSource.from_loaded`: a model in memory (the trainer's), fingerprinted by its weights
  and by what its tokenizer and image transform do.
* :func:`model_source`: a model given by path (a run directory, a checkpoint, an export),
  fingerprinted by its files' bytes and the load options, so a warm run never loads it.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any, Callable, Optional

from eval.encoding.cache import EmbeddingCache, digest_bytes, files_fingerprint, model_fingerprint
from eval.encoding.embed import EvalModel


class ModelSource:
    """A model bundle to evaluate, identified by ``fingerprint`` and loaded on first use.

    :meth:`start_loading` begins the load on a background thread, for a caller that expects to
    need the model and has other work meanwhile (e.g. hashing the model's files for the cache
    key: the hash releases the GIL, the load's imports and model build mostly hold it).
    """

    def __init__(self, fingerprint: str | Callable[[], str], load: Callable[[], EvalModel], name: str) -> None:
        self._fingerprint, self._load, self.name = fingerprint, load, name
        self._loaded: Optional[EvalModel] = None
        self._loader: Optional[threading.Thread] = None
        self._load_error: Optional[BaseException] = None

    @property
    def fingerprint(self) -> str:
        """The cache identity (computed on first use: hashing weights costs time)."""
        if callable(self._fingerprint):
            self._fingerprint = self._fingerprint()
        return self._fingerprint

    @classmethod
    def from_loaded(cls, loaded: EvalModel) -> "ModelSource":
        """A model already in memory (e.g. the trainer's); fingerprinted by content."""
        source = cls(lambda: in_memory_fingerprint(loaded), lambda: loaded, loaded.name)
        source._loaded = loaded
        return source

    @property
    def is_loaded(self) -> bool:
        return self._loaded is not None

    @property
    def load_started(self) -> bool:
        """True once a load began (in the background or in the caller's thread)."""
        return self._loaded is not None or self._loader is not None

    def start_loading(self) -> None:
        """Load on a background thread; :attr:`loaded` waits for it (and raises its error).
        The thread is a daemon: a process that ends without needing the model (every embedding
        was cached after all, or an error) does not wait for the load."""
        if self._loaded is not None or self._loader is not None:
            return

        def load() -> None:
            try:
                self._loaded = self._load()
            except BaseException as exn:  # re-raised by `loaded`, where the load would have run
                self._load_error = exn

        self._loader = threading.Thread(target=load, name=f"load {self.name}", daemon=True)
        self._loader.start()

    @property
    def loaded(self) -> EvalModel:
        if self._loaded is None:
            if self._loader is not None:
                self._loader.join()
                if self._load_error is not None:  # raised once; a later access loads again here
                    error, self._load_error, self._loader = self._load_error, None, None
                    raise error
            else:
                self._loaded = self._load()
        return self._loaded


def model_files(spec: Path) -> list[Path]:
    """The files a model spec is loaded from (what its cache identity hashes)."""
    if spec.is_file():
        return [spec]
    from vlp.checkpoints import latest_checkpoint

    ckpt = latest_checkpoint(spec)
    if ckpt is not None:
        return [Path(ckpt)]
    return sorted(p for p in spec.iterdir() if p.is_file() and not p.name.startswith("."))


def in_memory_fingerprint(loaded: EvalModel) -> str:
    """The cache identity of a model in memory: its weights, tokenizer and transform behaviour
    (:func:`model_fingerprint`), what it is built of beyond its weights (its module tree, which
    names activations and pooling, and its architecture settings) and the encoding code."""
    model = loaded.model
    settings = {"arch": getattr(model, "arch", None), "quick_gelu": getattr(model, "quick_gelu", None)}
    return digest_bytes("in-memory", model_fingerprint(loaded), repr(model),
                        json.dumps(settings, sort_keys=True, default=str), encoding_code_digest())


def encoding_code_digest() -> str:
    """Digest of the source files that decide how a model encodes (loading, towers, transforms,
    tokenizers, batching): a code change invalidates file-keyed cache entries."""
    import vlp  # the package only: its sub-modules (open_clip and all) are not imported here

    package = Path(vlp.__file__).parent
    files = sorted((package / "models").rglob("*.py")) + sorted((package / "interop").rglob("*.py"))
    files += [package / "data" / "transforms.py", package / "data" / "tokenizers.py",
              Path(__file__).with_name("embed.py")]
    return digest_bytes(*(p.read_bytes() for p in files if p.is_file()))


def model_source(spec: str | os.PathLike[str], cache: EmbeddingCache, device: str = "cpu",
                 model_config: str | None = None, allow_mismatch: bool = False) -> ModelSource:
    """A lazily loaded model whose cache identity comes from its files (no load on a warm run)."""
    import vlp

    path = Path(spec)
    if not path.exists():
        raise FileNotFoundError(f"--model {path} does not exist")
    files = model_files(path)
    if model_config and Path(model_config).is_file():
        files.append(Path(model_config))
    options = json.dumps({"model_config": Path(model_config).name if model_config and Path(model_config).is_file()
                          else model_config, "allow_mismatch": allow_mismatch,
                          "vlp": getattr(vlp, "__version__", "0"), "code": encoding_code_digest()}, sort_keys=True)

    def load() -> Any:
        from vlp.interop.load import load_eval_model

        return load_eval_model(str(path), device=device, model_config=model_config, allow_mismatch=allow_mismatch)

    def fingerprint() -> str:
        if not all(cache.knows_digest(f) for f in files):
            # files never hashed here: almost surely a cache miss, so load while hashing
            source.start_loading()
        return files_fingerprint(cache, files, options)

    source = ModelSource(fingerprint if cache.enabled else "", load, name=str(path))
    return source
