"""Labelling songs with a trained bundle: predict and the web server."""
