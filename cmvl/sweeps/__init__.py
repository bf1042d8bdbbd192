"""Sweeps: run directories named by their overrides (re-running a sweep skips finished jobs and resumes the
rest), the sweep report (table, CSV, plots) and the Hydra callback that writes it when a sweep ends."""
