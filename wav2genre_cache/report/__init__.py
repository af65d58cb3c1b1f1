"""`compare`: a run's tables and figures."""
