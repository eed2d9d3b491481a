"""Training: the run's config, planning from the data, recipes, losses, the loop and its log."""
