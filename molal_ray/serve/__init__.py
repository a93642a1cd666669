"""Ray Serve shells: the annotator deployments and their application."""

INGRESS_NAME = "AnnotatorsIngress"  # the application's ingress deployment (every other one is an annotator)
