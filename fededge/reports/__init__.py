"""What a run leaves behind: tables, plots, pages, budget sweeps and their comparison, progress."""
