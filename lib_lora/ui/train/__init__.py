"""The Train tab: the form, recipes, the run's view, the queue and the comparison of saved files."""
