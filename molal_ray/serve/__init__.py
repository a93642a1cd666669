"""Ray Serve shells: the annotator deployments and their application."""
