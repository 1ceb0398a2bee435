"""The web app (`scripts/serve.py`): the live demo and the collaborative annotation of masks."""
