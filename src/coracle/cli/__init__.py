"""`coracle`: a native client of the Docker Engine API with docker's verbs and flags."""
