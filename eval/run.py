"""``python -m eval run``: every requested task on every dataset it applies to, through one
encoder (embedding cache + data parallel), writing one JSON per (dataset, task), a merged CSV,
a markdown summary, and for retrieval a PNG grid of the top-5 images of a few text queries.

Dataset specs are paths, optionally prefixed by their kind (``KIND:PATH``); the kind is detected
otherwise (see :func:`detect_kind`). Each task runs on the datasets of the kinds it reads:

    zeroshot, linear_probe      classification  (CLIP_benchmark folder, image folder, CSV)
    retrieval, diagnostics      retrieval       (CLIP_benchmark folder, Karpathy JSON, CSV)
    compositionality            compositional (ours), aro, sugarcrepe, winoground
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence


from eval.cache import EmbeddingCache, digest_bytes, files_fingerprint
from eval.encoder import Encoder, ModelSource
from eval.report import write_result

log = logging.getLogger(__name__)

TASKS: tuple[str, ...] = ("zeroshot", "retrieval", "compositionality", "diagnostics", "linear_probe")
KINDS: tuple[str, ...] = ("classification", "retrieval", "compositional", "aro", "sugarcrepe", "winoground")
TASK_KINDS: dict[str, tuple[str, ...]] = {
    "zeroshot": ("classification",),
    "linear_probe": ("classification",),
    "retrieval": ("retrieval",),
    "diagnostics": ("retrieval",),
    "compositionality": ("compositional", "aro", "sugarcrepe", "winoground"),
}
GRID_QUERIES = 4


@dataclass(frozen=True)
class DatasetSpec:
    kind: str
    path: Path

    @property
    def name(self) -> str:
        return self.path.stem if self.path.is_file() else self.path.resolve().name


def _first_sample_fields(shard: Path) -> set[str]:
    import tarfile

    fields: set[str] = set()
    try:
        with tarfile.open(shard) as tar:
            first_key = None
            for member in tar:
                base = Path(member.name).name
                key, _, ext = base.partition(".")
                if first_key is None:
                    first_key = key
                if key != first_key:
                    break
                fields.add(ext)
    except (OSError, tarfile.TarError):
        pass
    return fields


def detect_kind(path: Path) -> str:
    """The kind of dataset at ``path`` from its files (ValueError when it cannot tell)."""
    from eval.aro import ORDER_FILES, VG_FILES
    from eval.sugarcrepe import SUBSETS as SUGARCREPE_SUBSETS

    if path.is_file():
        suffix = path.suffix.lower()
        if suffix == ".json":
            return "retrieval"  # Karpathy-split JSON
        if suffix in (".csv", ".tsv"):
            header = path.open(encoding="utf-8", errors="replace").readline().lower()
            return "classification" if "label" in header else "retrieval"
        raise ValueError(f"cannot tell the kind of dataset file {path}; prefix it with KIND: ({', '.join(KINDS)})")
    if not path.is_dir():
        raise FileNotFoundError(f"dataset not found: {path}")
    if (path / "examples.jsonl").is_file():
        return "winoground"
    if any((path / f).is_file() for f in (*VG_FILES.values(), *ORDER_FILES.values())):
        return "aro"
    if any((path / f"{s}.json").is_file() for s in SUGARCREPE_SUBSETS):
        return "sugarcrepe"
    declared = path / "dataset_type.txt"
    if declared.is_file():
        return "retrieval" if declared.read_text().strip().lower() == "retrieval" else "classification"
    if (path / "classnames.txt").is_file() and (path / "test" / "nshards.txt").is_file():
        return "classification"
    if (path / "test" / "0.tar").is_file():
        fields = _first_sample_fields(path / "test" / "0.tar")
        if "cls" in fields:
            return "classification"
        if "json" in fields:
            return "compositional"
        if "txt" in fields:
            return "retrieval"
    if any(child.is_dir() for child in path.iterdir()):
        return "classification"  # image folder: one sub-folder per class
    raise ValueError(f"cannot tell the kind of dataset folder {path}; prefix it with KIND: ({', '.join(KINDS)})")


def parse_dataset_specs(items: Iterable[str]) -> list[DatasetSpec]:
    """``[KIND:]PATH`` items -> specs (kind detected when not given)."""
    specs = []
    for item in items:
        item = item.strip()
        if not item:
            continue
        kind, sep, rest = item.partition(":")
        if sep and kind in KINDS:
            specs.append(DatasetSpec(kind, Path(rest)))
        else:
            specs.append(DatasetSpec(detect_kind(Path(item)), Path(item)))
    missing = [str(s.path) for s in specs if not s.path.exists()]
    if missing:
        raise FileNotFoundError(f"dataset not found: {', '.join(missing)}")
    return specs


def parse_tasks(text: str) -> list[str]:
    tasks = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [t for t in tasks if t not in TASKS]
    if unknown or not tasks:
        raise ValueError(f"unknown task(s) {', '.join(unknown) or '(none given)'}; choose from {', '.join(TASKS)}")
    return list(dict.fromkeys(tasks))


# ---------------------------------------------------------------------- model source
def model_files(spec: Path) -> list[Path]:
    """The files a model spec is loaded from (what its cache identity hashes)."""
    if spec.is_file():
        return [spec]
    from vlp.train.checkpoint import latest_checkpoint

    ckpt = latest_checkpoint(spec)
    if ckpt is not None:
        return [Path(ckpt)]
    return sorted(p for p in spec.iterdir() if p.is_file() and not p.name.startswith("."))


def encoding_code_digest() -> str:
    """Digest of the source files that decide how a model encodes (loading, towers, transforms,
    tokenizers, batching): a code change invalidates file-keyed cache entries."""
    import vlp  # the package only: its sub-modules (open_clip and all) are not imported here

    package = Path(vlp.__file__).parent
    files = sorted((package / "models").glob("*.py")) + [package / "data" / "transforms.py",
                                                         package / "data" / "tokenizers.py",
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
        from vlp.models.external import load_eval_model

        return load_eval_model(str(path), device=device, model_config=model_config, allow_mismatch=allow_mismatch)

    def fingerprint() -> str:
        if not all(cache.knows_digest(f) for f in files):
            # files never hashed here: almost surely a cache miss, so load while hashing
            source.start_loading()
        return files_fingerprint(cache, files, options)

    source = ModelSource(fingerprint if cache.enabled else "", load, name=str(path))
    return source


# ---------------------------------------------------------------------- datasets
def open_dataset(spec: DatasetSpec) -> Any:
    """An EvalDataset reader for a classification or retrieval spec (images not transformed yet)."""
    from eval.dataset_formats import open_classification, open_retrieval

    if spec.kind == "classification":
        return open_classification(spec.path, None)
    if spec.kind == "retrieval":
        if spec.path.is_file() and spec.path.suffix.lower() == ".json":  # Karpathy JSON: images beside it
            return open_retrieval(spec.path, None, image_root=spec.path.parent)
        return open_retrieval(spec.path, None)
    if spec.kind == "compositional":
        from eval.datasets import CompositionalShards

        return CompositionalShards(spec.path)
    raise ValueError(f"{spec.kind} datasets are read by their own task")


# ---------------------------------------------------------------------- tasks
@dataclass
class RunOptions:
    batch_size: int = 256
    num_workers: int = 0
    progress: bool = True
    aro_exclude: tuple[str, ...] = ()
    grid_queries: int = GRID_QUERIES
    search: str = "auto"  # retrieval top-k backend, see eval.search.resolve_backend
    aro_symmetric_filter: bool = True  # VG-Relation headline without symmetric relations, as published


def _compositional(encoder: Encoder, spec: DatasetSpec, options: RunOptions) -> list[dict[str, Any]]:
    loaded, device = encoder.loaded, encoder.device
    common = dict(batch_size=options.batch_size, device=device, progress=options.progress and encoder.runtime.is_main)
    if spec.kind == "compositional":
        from eval.compositionality import evaluate_compositional

        return [evaluate_compositional(loaded, spec.path, num_workers=options.num_workers, **common)]
    if spec.kind == "aro":
        from eval.aro import ORDER_FILES, VG_FILES, evaluate_aro

        files = {**VG_FILES, **ORDER_FILES}
        return [evaluate_aro(loaded, spec.path, subset, exclude=options.aro_exclude,
                             symmetric_filter=options.aro_symmetric_filter, **common)
                for subset, name in files.items() if (spec.path / name).is_file()]
    if spec.kind == "sugarcrepe":
        from eval.sugarcrepe import SUBSETS, evaluate_sugarcrepe

        subsets = [s for s in SUBSETS if (spec.path / f"{s}.json").is_file()]
        return [evaluate_sugarcrepe(loaded, spec.path, subsets, **common)]
    from eval.winoground import evaluate_winoground

    return [evaluate_winoground(loaded, spec.path, **common)]


def _grid(encoder: Encoder, dataset: Any, enc: Any, out_png: Path, queries: int) -> Path | None:
    """PNG of the top-5 images of ``queries`` captions spread over the set (true image framed)."""
    from eval.report import retrieval_grid_png

    if queries <= 0 or enc.texts.shape[0] == 0:
        return None
    records = enc.records  # row i of enc.images
    captions = [c for r in records for c in r.captions]
    picks = list(range(0, len(captions), max(1, len(captions) // queries)))[:queries]
    top = (enc.texts[picks] @ enc.images.T).topk(min(5, enc.images.shape[0]), dim=1).indices.tolist()
    from eval.encoder import sample_id

    state = (dataset.transform, dataset.decode_images)
    dataset.transform, dataset.decode_images = None, True
    dataset.only_keys = {records[i].key for row in top for i in row}
    dataset.partition(0, 1)
    try:
        pil = {sample_id(r): r.image for r in dataset if hasattr(r, "image")}
    finally:
        dataset.transform, dataset.decode_images = state
        dataset.only_keys = None
    rows = [[pil.get(sample_id(records[i])) for i in row] for row in top]
    truth = [int(enc.text_to_image[p]) for p in picks]
    correct = [row.index(t) if t in row else None for row, t in zip(top, truth)]
    return retrieval_grid_png([captions[p] for p in picks], rows, out_png, k=5, correct=correct)


def _probe_splits(spec: DatasetSpec) -> dict[str, Any]:
    """train/test (and val when present) readers of a CLIP_benchmark classification folder."""
    from eval.datasets import ClassificationShards
    from eval.linear_probe import probe_splits

    splits = probe_splits(spec.path)
    missing = [s for s in ("train", "test") if not (spec.path / s / "nshards.txt").is_file()]
    if missing:
        raise FileNotFoundError(f"linear_probe needs {spec.path}/train and /test shards (missing: {', '.join(missing)})")
    return {split: ClassificationShards(spec.path, split=split) for split in splits}


def output_names(specs: Sequence[DatasetSpec]) -> dict[DatasetSpec, str]:
    """A distinct file-name stem per dataset: its name, prefixed by its parent folder's name (then
    a number) when two datasets share a name, so no result overwrites another."""
    names: dict[DatasetSpec, str] = {}
    taken: set[tuple[str, str]] = set()
    # datasets of different kinds write different task names, so only a name shared within a kind clashes
    clashing = {(s.kind, s.name) for s in specs if sum((o.kind, o.name) == (s.kind, s.name) for o in specs) > 1}
    for spec in specs:
        clash = (spec.kind, spec.name) in clashing
        name = f"{spec.path.resolve().parent.name}-{spec.name}" if clash else spec.name
        base, n = name, 2
        while (spec.kind, name) in taken:
            name, n = f"{base}-{n}", n + 1
        names[spec] = name
        taken.add((spec.kind, name))
    return names


def plan_runs(tasks: Sequence[str], datasets: Sequence[DatasetSpec]) -> list[tuple[DatasetSpec, list[str], Any, Any]]:
    """(spec, its tasks, its reader, its linear-probe splits) per dataset some task reads.

    Opens every reader first, so a missing file or a dataset no task reads is reported before an
    hour of encoding, not after.
    """
    plan = []
    for spec in datasets:
        wanted = [t for t in tasks if spec.kind in TASK_KINDS[t]]
        if not wanted:
            readers = ", ".join(t for t in TASKS if spec.kind in TASK_KINDS[t])
            log.warning("no requested task reads %s dataset %s (%s would)", spec.kind, spec.path, readers)
            continue
        dataset = open_dataset(spec) if spec.kind in ("classification", "retrieval") else None
        probe = _probe_splits(spec) if "linear_probe" in wanted else None
        plan.append((spec, wanted, dataset, probe))
    if not plan:
        raise ValueError("none of the requested tasks reads any of the given datasets")
    return plan


def run_tasks(encoder: Encoder, tasks: Sequence[str], datasets: Sequence[DatasetSpec],
              output_dir: str | os.PathLike[str] | None, options: RunOptions | None = None) -> list[dict[str, Any]]:
    """Run ``tasks`` on the datasets they apply to; rank 0 writes DIR/<dataset>_<task>.json
    (``task`` as named in ``tasks``: ``zeroshot``, ``retrieval``, ...; the JSON's own ``task``
    field keeps CLIP_benchmark's name), DIR/results.csv and DIR/summary.md, and the PNGs
    (nothing when ``output_dir`` is None). Returns the result dicts (on every rank), in order."""
    from eval.diagnostics import diagnostics_result
    from eval.retrieval import encode_retrieval, retrieval_result
    from eval.zeroshot import zeroshot_task

    options = options or RunOptions()
    out = Path(output_dir) if output_dir is not None else None
    main = encoder.runtime.is_main
    write = main and out is not None
    plan = plan_runs(tasks, datasets)  # every dataset opened (and checked) before any work starts
    if write:
        out.mkdir(parents=True, exist_ok=True)
    results: list[dict[str, Any]] = []
    written: set[str] = set()

    def emit(result: dict[str, Any], task: str, stem: str) -> None:
        result.setdefault("model_warnings", encoder.model_warnings())
        result.setdefault("language", "en")  # CLIP_benchmark's result keys
        file_name, n = f"{stem}_{task}.json", 2
        while file_name in written:  # e.g. two Winoground folders: both results are "winoground"
            file_name, n = f"{stem}-{n}_{task}.json", n + 1
        written.add(file_name)
        if write:
            result["path"] = str(write_result(out / file_name, result))
        results.append(result)

    names = output_names([spec for spec, *_ in plan])
    for spec, wanted, dataset, probe_splits in plan:
        name = names[spec]
        if spec.kind == "classification":
            if "zeroshot" in wanted:
                emit(zeroshot_task(encoder, dataset), "zeroshot", name)
            if "linear_probe" in wanted:
                from eval.linear_probe import linear_probe_task

                emit(linear_probe_task(encoder, probe_splits), "linear_probe", name)
        elif spec.kind == "retrieval":
            enc = encode_retrieval(encoder, dataset)
            if "retrieval" in wanted:
                result = retrieval_result(encoder.source.name, enc, backend=options.search)
                if write:
                    png = _grid(encoder, dataset, enc, out / f"{name}_retrieval_top5.png", options.grid_queries)
                    if png is not None:
                        result["top5_grid_png"] = str(png)
                emit(result, "retrieval", name)
            if "diagnostics" in wanted:
                png = out / f"{name}_similarity_histogram.png" if write else None
                emit(diagnostics_result(encoder.source.name, enc, png), "diagnostics", name)
        else:
            for result in _compositional(encoder, spec, options):
                result["model"] = encoder.source.name  # the spec, as every other task names it
                # ours is named like the other kinds; ARO/SugarCrepe/Winoground by their subset
                stem = name if result["dataset"] == spec.name else str(result["dataset"])
                emit(result, "compositionality", stem)
    if write and results:
        from eval.report import build_csv, write_markdown_summary

        build_csv(results, out / "results.csv")
        write_markdown_summary(results, out / "summary.md")
    encoder.cache.flush_digests()
    return results
