"""Training of per-task specialists."""
