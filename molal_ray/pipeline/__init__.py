"""Ray Data pipeline: read the pool, annotate through Serve, write the annotation table."""
