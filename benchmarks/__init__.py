"""The benchmarks and experiments of CheXtriev, one module each, run as ``python -m benchmarks NAME``.

``python -m benchmarks`` lists them with the first sentence of their docstrings; ``python -m benchmarks NAME
--help`` explains one. Figures go to BENCHMARKS.md (speed) and results/ (quality experiments),
each with the command that made it and the machine (:func:`benchmarks.harness.machine_line`).
:mod:`benchmarks.harness` holds what they share (machine description, timing, the synthetic
archive, the random-weight default checkpoint, synthetic vectors); product logic (evaluation,
checkpoint writing) lives in the library (``chextriev``, ``metrics``, ``indexer``, ``server``)
and is called from here, never copied.
"""
