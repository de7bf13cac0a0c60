"""Reading sweeps: the sweep model, report.md/csv/png and the transfer-study view."""
