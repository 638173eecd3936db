"""Attention inside the lungs (AIL): class activation maps, lung masks and the measurement over a data set."""
