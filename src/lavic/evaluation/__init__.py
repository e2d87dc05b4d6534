"""Evaluation: pure metric functions (:mod:`.metrics`), decoding of the answer
(:mod:`.decoding`: generate / constrained / score), the evaluator and ``lavic evaluate``
(:mod:`.evaluate`), and the comparison table and plot (:mod:`.report`)."""
