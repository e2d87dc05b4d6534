"""Evaluation: the evaluator and ``lavic evaluate`` (:mod:`.evaluate`), its result files
(:mod:`.results`), and the comparison table and plot (:mod:`.report`). Decoding the answer
(generate / constrained / score) belongs to the model: :mod:`lavic.model.decoding`."""
