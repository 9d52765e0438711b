"""Evaluation metrics: ``toy2d`` (exact 2D mode coverage and W1); image metrics live in their own modules."""
