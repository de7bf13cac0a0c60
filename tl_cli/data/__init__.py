"""Datasets (a name-keyed registry) and the LightningDataModule that serves them."""
