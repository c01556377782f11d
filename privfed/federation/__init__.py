"""What a run needs before round 1 (data, model, clients), the server's view of a round, and flat vectors."""
