"""Predicting and scoring: ``inference`` (``Predictor``, the prediction loop), ``ensemble_file``
(``ensemble.json``), ``evaluate`` (a split, loose files), ``thresholds``, ``metrics``, ``oof`` (saved
probabilities), ``reports`` (tables, figures, result CSVs), ``statistics`` (over seeds and resamples)."""
