"""Workbench: notebook workflows, papermill sweeps, the λ explorer, the shipped models and the demo."""
