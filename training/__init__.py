"""Training: the epoch loops (engine), one run's life (run), graceful stops, history."""
