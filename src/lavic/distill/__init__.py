"""Stage 1: visual knowledge self-distillation (``lavic distill``) and teacher descriptions
(``lavic describe``)."""
