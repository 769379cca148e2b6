"""Evaluations of trained models; each writes one JSON result (see :mod:`ebft.evaluation.results`)."""
