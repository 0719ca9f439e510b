"""Reading and checking models in foreign formats (and our own files) for evaluation.

``load.load_eval_model(spec)`` is the entry point: ``detect`` tells the format, ``vlp_files``,
``open_clip_files`` and ``hf_clip`` load each, ``consistency`` checks model against tokenizer,
and every loader returns a ``loaded.LoadedModel``.
"""
