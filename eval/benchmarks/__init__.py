"""Published compositionality benchmarks read from their released files: ARO (with its
relations and word-order perturbations), SugarCrepe and Winoground, scored by caption choice
through the eval :class:`~eval.encoding.encoder.Encoder`."""
