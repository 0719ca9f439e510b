"""The eval application: ``python -m eval`` (:mod:`eval.__main__`), ``eval run`` (:mod:`eval.run`),
the built-in suite (:mod:`eval.suite`) and the end-of-training evaluation (:mod:`eval.training`).

    tasks/        one file per task, each declaring a Task; registry.py collects them
    benchmarks/   published formats: ARO (relations, perturbations), SugarCrepe, Winoground
    datasets/     readers (CLIP_benchmark shards, image folders, CSV, Karpathy JSON), records, kinds
    encoding/     encoder, embedding cache, data-parallel split, batching, embedding helpers, top-k search
    metrics.py    CLIP_benchmark's zero-shot, retrieval and caption-selection metrics
    report.py     result JSON, results.csv, summary.md, retrieval grid PNG
"""
