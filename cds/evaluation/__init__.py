"""Evaluation of the shipped models on the synthetic test split and held-out SPIDER patients.

`cds evaluate --out DIR` runs the product's own pipeline (cds.pipeline.quick_read) over every test
study, compares its outputs with the generator's ground truth, and writes DIR/metrics.json and
DIR/report.html. Nothing here re-implements a model: the pipeline's stages are only observed
(cds.evaluation.recorder), and the metric maths (cds.evaluation.metrics) is plain NumPy so that
it can be checked against hand-computed values.
"""
