"""Configuration: the structured-config schemas, their checks, and where configs live."""
