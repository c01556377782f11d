"""What drives the engine for a study rather than a single run: the ε sweep with its tuner and seeds."""
