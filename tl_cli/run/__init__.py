"""A training run: its directory, the steps that train one, resume, and loading a trained run."""
