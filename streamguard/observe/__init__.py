"""The observation plane: metrics, health endpoints and structured logs."""
